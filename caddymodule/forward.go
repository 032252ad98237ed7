package streamproxy

import (
	"io"

	"github.com/streamproxy/caddy-stream-proxy/formreader"
)

// serveForward re-encodes the client's form under a fresh boundary and streams
// it into one backend request while it arrives, then streams the backend's
// response back.
func (h *Handler) serveForward(u *upload) result {
	defer u.closeBody()
	// The body is opened, and its read buffer taken, once the backend is
	// connected and takes it, not while the backend is dialled.
	answer, uerr := u.exchangeForm(u.w, func(mw *formWriter) error { return u.forward(u.openBody(), mw) })
	if uerr != nil {
		return failed(uerr, nil)
	}
	return result{status: answer.status}
}

// forward copies every part of form into mw, in order.
func (u *upload) forward(form *formreader.Reader, mw *formWriter) error {
	reserved := newReservedNames(u.h.digestSuffixes())
	for {
		p, err := form.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if err := p.Forwardable(); err != nil {
			return err
		}
		if err := reserved.check(p); err != nil {
			return err
		}
		dst, err := mw.WritePart(p)
		if err != nil {
			return err
		}
		if err := u.copyPart(dst, p); err != nil {
			return err
		}
		if err := writeDigestFields(mw, p); err != nil {
			return err
		}
		if err := writeDetectedField(mw, p); err != nil {
			return err
		}
	}
	return nil
}
