package integration

// Edge cases of the features that filter and check parts in forward mode:
// allow_fields, allow_types, per-part digests (Content-MD5, Content-Digest)
// and hash. Each refusal comes mid-stream, after earlier parts were already
// forwarded, so the backend must see its request aborted.

import (
	"crypto/md5"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"testing"
)

// rawForm builds a form from parts given as (header lines, data).
func rawForm(boundary string, parts ...[2]string) string {
	var sb strings.Builder
	for _, p := range parts {
		sb.WriteString("--" + boundary + "\r\n" + p[0] + "\r\n" + p[1] + "\r\n")
	}
	sb.WriteString("--" + boundary + "--\r\n")
	return sb.String()
}

func dispo(name, filename string) string {
	if filename == "" {
		return "Content-Disposition: form-data; name=\"" + name + "\"\r\n"
	}
	return "Content-Disposition: form-data; name=\"" + name + "\"; filename=\"" + filename + "\"\r\n"
}

// bigFile is a file part's data large enough to be streamed to the backend
// before the part after it is read.
var bigFile = strings.Repeat("0123456789abcdef", 32<<10) // 512 KiB

func TestEdgeAllowFieldsAndTypes(t *testing.T) {
	be := newBackend(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s {
	allow_fields model audio image
	allow_types audio/* image/png
}`, be.URL))
	c := newClient(t)
	const b = "Allow"
	n := 0
	for _, tc := range []struct {
		name   string
		body   string
		status int
		code   string
		index  int
		field  string
	}{
		{"allowed fields and types", rawForm(b,
			[2]string{dispo("model", ""), "m"},
			[2]string{dispo("audio", "a.wav") + "Content-Type: audio/wav\r\n", bigFile},
			[2]string{dispo("image", "i.png") + "Content-Type: IMAGE/PNG; name=x\r\n", "png"},
		), 200, "", 0, ""},
		{"field not allowed, after a file", rawForm(b,
			[2]string{dispo("audio", "a.wav") + "Content-Type: audio/wav\r\n", bigFile},
			[2]string{dispo("evil", ""), "x"},
		), 400, "field_not_allowed", 1, "evil"},
		{"text field name not allowed", rawForm(b,
			[2]string{dispo("Model", ""), "case matters"},
		), 400, "field_not_allowed", 0, "Model"},
		{"type not allowed, after a file", rawForm(b,
			[2]string{dispo("audio", "a.wav") + "Content-Type: audio/wav\r\n", bigFile},
			[2]string{dispo("image", "i.jpg") + "Content-Type: image/jpeg\r\n", "jpg"},
		), 415, "type_not_allowed", 1, "image"},
		{"file without a type is application/octet-stream", rawForm(b,
			[2]string{dispo("audio", "a.bin"), "data"},
		), 415, "type_not_allowed", 0, "audio"},
		{"audio/* does not match audiox/wav", rawForm(b,
			[2]string{dispo("audio", "a.wav") + "Content-Type: audiox/wav\r\n", "data"},
		), 415, "type_not_allowed", 0, "audio"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, out := postRaw(t, c, "multipart/form-data; boundary="+b, []byte(tc.body), n%2 == 1)
			n++
			got := be.waitRequests(t, n)
			if len(got) != n {
				t.Fatalf("backend got %d requests, want %d", len(got), n)
			}
			if tc.status == 200 {
				if res.StatusCode != 200 || got[n-1].Err != nil || len(got[n-1].Parts) != 3 {
					t.Fatalf("status %d, backend %+v: %s", res.StatusCode, got[n-1], out)
				}
				return
			}
			e := expectRefusal(t, res, out, tc.status, tc.code, "")
			if e.Error.Part == nil || e.Error.Part.Index != tc.index || e.Error.Part.Field != tc.field {
				t.Errorf("error names part %+v, want index %d field %q", e.Error.Part, tc.index, tc.field)
			}
			if got[n-1].Err == nil {
				t.Fatalf("backend must see an aborted request, saw %+v", got[n-1].Parts)
			}
		})
	}
}

// Per-part digests the client declares (Content-MD5, RFC 9530 Content-Digest)
// are verified at the part's end: a mismatch is 400 digest_mismatch and the
// backend request is aborted, never completed.
func TestEdgePartDigests(t *testing.T) {
	be := newBackend(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s`, be.URL))
	c := newClient(t)
	const b = "Digest"
	md5b64 := func(s string) string { sum := md5.Sum([]byte(s)); return base64.StdEncoding.EncodeToString(sum[:]) }
	sha256sf := func(s string) string {
		sum := sha256.Sum256([]byte(s))
		return ":" + base64.StdEncoding.EncodeToString(sum[:]) + ":"
	}
	sha512sf := func(s string) string {
		sum := sha512.Sum512([]byte(s))
		return ":" + base64.StdEncoding.EncodeToString(sum[:]) + ":"
	}
	other := bigFile[1:] + "!"

	n := 0
	for _, tc := range []struct {
		name   string
		header string
		status int
		code   string
	}{
		{"Content-MD5 right", "Content-MD5: " + md5b64(bigFile), 200, ""},
		{"Content-Digest sha-256 right", "Content-Digest: sha-256=" + sha256sf(bigFile), 200, ""},
		{"Content-Digest sha-256 and sha-512 right", "Content-Digest: sha-256=" + sha256sf(bigFile) + ", sha-512=" + sha512sf(bigFile), 200, ""},
		{"Content-Digest with an unknown algorithm only", "Content-Digest: unixsum=:AAAA:", 200, ""},
		{"Content-MD5 wrong", "Content-MD5: " + md5b64(other), 400, "digest_mismatch"},
		{"Content-Digest sha-256 wrong", "Content-Digest: sha-256=" + sha256sf(other), 400, "digest_mismatch"},
		{"Content-Digest sha-512 wrong, sha-256 right", "Content-Digest: sha-256=" + sha256sf(bigFile) + ", sha-512=" + sha512sf(other), 400, "digest_mismatch"},
		{"Content-MD5 not a digest", "Content-MD5: not-base64", 400, "malformed_multipart"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := rawForm(b,
				[2]string{dispo("model", ""), "m"},
				[2]string{dispo("audio", "a.wav") + tc.header + "\r\n", bigFile},
				[2]string{dispo("after", ""), "x"},
			)
			res, out := postRaw(t, c, "multipart/form-data; boundary="+b, []byte(body), n%2 == 1)
			n++
			got := be.waitRequests(t, n)
			if len(got) != n {
				t.Fatalf("backend got %d requests, want %d", len(got), n)
			}
			if tc.status == 200 {
				if res.StatusCode != 200 || got[n-1].Err != nil || len(got[n-1].Parts) != 3 {
					t.Fatalf("status %d, backend %+v: %s", res.StatusCode, got[n-1], out)
				}
				return
			}
			e := expectRefusal(t, res, out, tc.status, tc.code, "")
			expectPart(t, e, 1, "audio", "a.wav")
			if got[n-1].Err == nil {
				t.Fatalf("backend must see an aborted request, saw %+v", got[n-1].Parts)
			}
		})
	}
}

// With hash, each file part is followed in the forwarded form by a text
// field <field>.<hash> carrying its hex digest; text fields get none.
func TestEdgeHashFields(t *testing.T) {
	rec := newRecorder(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s {
	hash sha256 md5
}`, rec.URL))
	parts := []formPart{
		{field: "model", value: "m"},
		{field: "audio", filename: "a.wav", contentType: "audio/wav", size: 3<<20 + 7, seed: 1},
		{field: "empty", filename: "e.bin", size: 0},
	}
	res, out := postForm(t, newClient(t), gatewayURL+"/upload", parts, true)
	if res.StatusCode != 200 {
		t.Fatalf("status %d: %s", res.StatusCode, out)
	}
	got := rec.wait(1)
	if len(got) != 1 {
		t.Fatalf("backend got %d requests", len(got))
	}
	seen, err := got[0].parts()
	if err != nil {
		t.Fatal(err)
	}
	digest := func(p formPart) (string, string) {
		data, _ := io.ReadAll(newFileData(p.size, p.seed))
		s, m := sha256.Sum256(data), md5.Sum(data)
		return hex.EncodeToString(s[:]), hex.EncodeToString(m[:])
	}
	aSHA, aMD5 := digest(parts[1])
	eSHA, eMD5 := digest(parts[2])
	want := []string{"model=m", "audio=<file>", "audio.sha256=" + aSHA, "audio.md5=" + aMD5,
		"empty=<file>", "empty.sha256=" + eSHA, "empty.md5=" + eMD5}
	var have []string
	for _, p := range seen {
		if p.HasFilename {
			have = append(have, p.Field+"=<file>")
		} else {
			have = append(have, p.Field+"="+string(p.Data))
		}
	}
	if strings.Join(have, "\n") != strings.Join(want, "\n") {
		t.Fatalf("backend saw\n%s\nwant\n%s", strings.Join(have, "\n"), strings.Join(want, "\n"))
	}
}
