package streamproxy

import (
	"encoding/hex"
	"io"
	"mime/multipart"
	"net/http"
)

// serveForward re-encodes the client's form under a fresh boundary and streams
// it through a pipe into one backend request, then streams the backend's
// response back.
func (h *Handler) serveForward(u *upload) error {
	form := u.openBody()
	defer u.closeBody()
	if uerr := u.exchangeForm(u.relayTo(u.w), func(mw *multipart.Writer) error { return u.forward(form, mw) }); uerr != nil {
		return u.fail(uerr)
	}
	return nil
}

// exchangeForm sends the backend one multipart/form-data request under a fresh
// boundary, whose parts write adds while the client's body is read, and
// hands the answer to w.
func (u *upload) exchangeForm(w *backendWriter, write func(mw *multipart.Writer) error) *uploadError {
	out := getWriter()
	defer putWriter(out)
	bw := newIdleFlusher(out)
	mw := multipart.NewWriter(bw)
	header := http.Header{"Content-Type": {mw.FormDataContentType()}}
	return u.roundTrip(w, header, func(body io.Writer) error {
		out.Reset(body)
		defer u.flushWhenIdle(bw)()
		if err := write(mw); err != nil {
			return err
		}
		if err := mw.Close(); err != nil {
			return err
		}
		return bw.Flush()
	})
}

// forward copies every part of form into mw, in order.
func (u *upload) forward(form *formReader, mw *multipart.Writer) error {
	for {
		p, err := form.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if err := p.forwardable(); err != nil {
			return err
		}
		dst, err := mw.CreatePart(p.formHeader())
		if err != nil {
			return err
		}
		if err := u.copyPart(dst, p); err != nil {
			return err
		}
		if err := writeDigestFields(mw, p); err != nil {
			return err
		}
	}
	return nil
}

// copyPart writes one part's data to dst, straight from the client's read
// buffer.
func (u *upload) copyPart(dst io.Writer, p *formPart) error {
	for {
		b, err := p.next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if _, err := dst.Write(b); err != nil {
			return err
		}
		u.sent.Add(int64(len(b)))
	}
}

// writeDigestFields follows a file part with a text field per configured
// digest: `<field>.sha256` and so on.
func writeDigestFields(mw *multipart.Writer, p *formPart) error {
	if !p.IsFile || p.digests == nil {
		return nil
	}
	for i, name := range p.digests.names {
		sum := hex.EncodeToString(p.digests.computed[i].Sum(nil))
		if err := mw.WriteField(p.Field+"."+name, sum); err != nil {
			return err
		}
	}
	return nil
}

// flushWhenIdle hands f the client's reads, so that it sends what it holds
// for the backend once the client pauses. It returns the function that ends
// this, which returns once f's timer can no longer flush.
func (u *upload) flushWhenIdle(f *idleFlusher) (stop func()) {
	u.body.idle = f
	return func() {
		u.body.idle = nil
		f.end()
	}
}
