package streamproxy

import (
	"bufio"
	"encoding/hex"
	"io"
	"mime/multipart"
	"net/http"
)

// serveForward re-encodes the client's form under a fresh boundary and streams
// it through an io.Pipe into one backend request, then streams the backend's
// response back.
func (h *Handler) serveForward(u *upload) error {
	form := u.openBody()
	defer u.closeBody()

	out := writerPool.Get().(*bufio.Writer)
	defer func() {
		out.Reset(nil)
		writerPool.Put(out)
	}()
	mw := multipart.NewWriter(out)

	header := http.Header{"Content-Type": {mw.FormDataContentType()}}
	res, uerr := u.exchange(header, func(w io.Writer) error {
		out.Reset(w)
		return u.forward(form, mw, out)
	})
	if uerr != nil {
		return u.fail(uerr)
	}
	return u.relay(res)
}

// forward copies every part of form into mw, in order, and closes mw.
func (u *upload) forward(form *formReader, mw *multipart.Writer, out *bufio.Writer) error {
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	for {
		if err := u.flushIfIdle(out); err != nil {
			return err
		}
		p, err := form.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		dst, err := mw.CreatePart(p.formHeader())
		if err != nil {
			return err
		}
		if err := u.copyPart(dst, p, out, *bp); err != nil {
			return err
		}
		if err := writeDigestFields(mw, p); err != nil {
			return err
		}
	}
	if err := mw.Close(); err != nil {
		return err
	}
	return out.Flush()
}

// copyPart copies one part's data into dst. When dst streams to a backend,
// out is its buffer, flushed whenever the client has nothing more buffered.
func (u *upload) copyPart(dst io.Writer, p *formPart, out *bufio.Writer, buf []byte) error {
	for {
		n, err := p.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
			u.sent.Add(int64(n))
			if werr := u.flushIfIdle(out); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
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

// flushIfIdle sends what is buffered for the backend when the next read from
// the client may block, so that the backend gets every byte as soon as the
// client has sent it, in writes as large as the client's reads allow.
func (u *upload) flushIfIdle(out *bufio.Writer) error {
	if out != nil && u.in.Buffered() == 0 && out.Buffered() > 0 {
		return out.Flush()
	}
	return nil
}
