package streamproxy

import (
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/streamproxy/caddy-stream-proxy/formreader"
	"github.com/streamproxy/caddy-stream-proxy/store"
)

// storing is one upload's files in store mode.
type storing struct {
	u      *upload
	batch  store.Batch
	parts  []partResult
	stored []storedPart      // the file parts, for the answer
	fields map[string]string // kept text fields, without a backend

	// idle is the store's bound on each read from the client while one of
	// its files arrives (store.IdleBounder); 0: none.
	idle time.Duration
}

// storedPart is a stored file part in the JSON answer: the part and where it
// is. Its fields hide partResult's Path.
type storedPart struct {
	partResult
	Path   string `json:"path,omitempty"`
	Bucket string `json:"bucket,omitempty"`
	Key    string `json:"key,omitempty"`
}

// receive reads the whole form: file parts go to the store; text fields go to mw
// when there is a backend (with each file's metadata after it), or are kept
// for the JSON answer when there is none.
func (st *storing) receive(form *formreader.Reader, mw *formWriter) error {
	u := st.u
	var reserved *reservedNames
	if mw != nil {
		reserved = newReservedNames(u.h.metadataSuffixes())
	}
	for {
		p, err := form.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if mw != nil {
			if err := p.Forwardable(); err != nil {
				return err
			}
			if err := reserved.check(p); err != nil {
				return err
			}
		}
		if !p.IsFile {
			if mw != nil {
				dst, err := mw.WritePart(p)
				if err != nil {
					return err
				}
				if err := u.copyPart(dst, p); err != nil {
					return err
				}
			} else if err := st.keepField(p); err != nil {
				return err
			}
			st.parts = append(st.parts, newPartResult(p))
			continue
		}

		sf, err := st.batch.Create(store.FileInfo{Field: p.Field, Filename: p.Filename, ContentType: p.ContentType, DetectedType: p.DetectedType})
		if err != nil {
			err = asStoreError(err)
			if ue, ok := err.(*uploadError); ok && ue.Part == nil && ue.Status < 500 {
				ue.Part = p.Ref()
			}
			return err
		}
		unbound := u.body.boundIdle(st.idle)
		err = u.copyPart(sf, p) // the store buffers as its medium needs
		unbound()
		if err != nil {
			return asStoreError(err)
		}
		r := newPartResult(p)
		if err := sf.Finish(store.FileInfo{Field: p.Field, Filename: p.Filename, ContentType: p.ContentType,
			DetectedType: p.DetectedType, Size: r.Size, Digests: r.Digests}); err != nil {
			return asStoreError(err)
		}
		loc := sf.Location()
		r.Path = loc.Path
		st.parts = append(st.parts, r)
		st.stored = append(st.stored, storedPart{partResult: r, Path: loc.Path, Bucket: loc.Bucket, Key: loc.Key})
		if mw != nil {
			if err := st.writeMetadata(mw, r, loc); err != nil {
				return err
			}
		}
	}
}

func (st *storing) keepField(p *formreader.Part) error {
	v, kept, err := st.u.readField(p)
	if err != nil {
		return err
	}
	if kept {
		if st.fields == nil {
			st.fields = make(map[string]string)
		}
		st.fields[p.Field] = v
	}
	return nil
}

// writeMetadata tells the backend about a stored file, as nginx's upload module
// does: <field>.name, .content_type, where it is (.path, absolute, on disk;
// .bucket and .key in an object store), .size and a field per configured
// digest.
func (st *storing) writeMetadata(mw *formWriter, r partResult, loc store.Location) error {
	fields := [][2]string{
		{".name", *r.Filename},
		{".content_type", r.ContentType},
	}
	if r.DetectedType != "" {
		fields = append(fields, [2]string{".detected_type", r.DetectedType})
	}
	if loc.AbsPath != "" {
		fields = append(fields, [2]string{".path", loc.AbsPath})
	}
	if loc.Key != "" {
		fields = append(fields, [2]string{".bucket", loc.Bucket}, [2]string{".key", loc.Key})
	}
	fields = append(fields, [2]string{".size", strconv.FormatInt(r.Size, 10)})
	for _, name := range st.u.h.Hash {
		fields = append(fields, [2]string{"." + name, r.Digests[name]})
	}
	for _, f := range fields {
		if err := mw.WriteField(r.Field+f[0], f[1]); err != nil {
			return err
		}
	}
	return nil
}

// commit makes every file visible once the whole form has ended cleanly.
func (st *storing) commit() error {
	if err := st.batch.Commit(); err != nil {
		return asStoreError(err)
	}
	return nil
}

// discard removes every file of the upload, committed or not.
func (st *storing) discard() {
	st.batch.Discard()
	st.stored = nil
	for i := range st.parts {
		st.parts[i].Path = "" // reported parts were not stored after all
	}
}

// serveStore writes file parts to the store. Without a backend it answers 201
// with JSON describing them; with one, the backend gets the text fields and
// each file's metadata, and the files are removed if it answers an error.
func (h *Handler) serveStore(u *upload) result {
	form := u.openBody()
	defer u.closeBody()
	st := &storing{u: u, batch: h.store.Begin(u.r.Context(), u.log())}
	if ib, ok := h.store.(store.IdleBounder); ok {
		st.idle = ib.IdleBound()
	}

	if h.proxy == nil {
		if err := st.receive(form, nil); err != nil {
			st.discard()
			return failed(asUploadError(err), st.parts)
		}
		if err := st.commit(); err != nil {
			st.discard()
			return failed(asUploadError(err), st.parts)
		}
		return u.reply(http.StatusCreated, map[string]any{"parts": st.answer(), "fields": st.fields})
	}

	answer, uerr := u.exchangeForm(u.w, func(mw *formWriter) error {
		if err := st.receive(form, mw); err != nil {
			return err
		}
		return st.commit() // before the closing delimiter: the backend sees a complete form only once the files are in place
	})
	if uerr != nil {
		st.discard()
		return failed(uerr, st.parts)
	}
	if answer.status >= 400 || answer.early {
		st.discard() // nginx's upload_cleanup
	}
	return result{status: answer.status}
}

// answer lists the parts, the stored ones with where they are.
func (st *storing) answer() []any {
	out := make([]any, 0, len(st.parts))
	j := 0
	for _, p := range st.parts {
		if j < len(st.stored) && st.stored[j].Index == p.Index {
			out = append(out, st.stored[j])
			j++
			continue
		}
		out = append(out, p)
	}
	return out
}
