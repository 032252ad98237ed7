package streamproxy

import (
	"bufio"
	"io"
	"mime/multipart"
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

	res, uerr := u.exchange(mw.FormDataContentType(), func(w io.Writer) error {
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
	}
	if err := mw.Close(); err != nil {
		return err
	}
	return out.Flush()
}

// copyPart copies one part's data into dst.
func (u *upload) copyPart(dst io.Writer, p *formPart, out *bufio.Writer, buf []byte) error {
	for {
		n, err := p.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
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

// flushIfIdle sends what is buffered for the backend when the next read from
// the client may block, so that the backend gets every byte as soon as the
// client has sent it, in writes as large as the client's reads allow.
func (u *upload) flushIfIdle(out *bufio.Writer) error {
	if u.in.Buffered() == 0 && out.Buffered() > 0 {
		return out.Flush()
	}
	return nil
}
