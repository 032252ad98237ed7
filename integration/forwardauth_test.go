package integration

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// authBackend is an auth service for forward_auth: it lets a request through
// (200 with X-User) when it carries the right bearer token, and answers 401
// with a JSON body otherwise. It counts the requests it got and the body
// bytes they carried.
type authBackend struct {
	*httptest.Server
	calls     atomic.Int64
	bodyBytes atomic.Int64
}

const authToken = "Bearer good-token"

func newAuthBackend(t *testing.T) *authBackend {
	a := &authBackend{}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.calls.Add(1)
		n, _ := io.Copy(io.Discard, r.Body)
		a.bodyBytes.Add(n)
		if r.Header.Get("Authorization") != authToken {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"error":"unauthorized"}`)
			return
		}
		w.Header().Set("X-User", "alice")
	}))
	t.Cleanup(a.Close)
	return a
}

// countingBody counts the bytes the client's transport took from a body.
type countingBody struct {
	io.ReadCloser
	n atomic.Int64
}

func (c *countingBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// Auth in front, as the README shows it: forward_auth asks an auth service
// about each request (a GET without the body) before stream_proxy reads a
// byte of the upload. A denial is the auth service's answer, the upload
// backend never sees a request; an allowed upload arrives byte-identical,
// with the header the auth service returned and never the client's own.
func TestForwardAuthInFront(t *testing.T) {
	auth := newAuthBackend(t)
	be := newBackend(t)
	var backendHits atomic.Int64
	be.before = func(http.ResponseWriter, *http.Request) bool {
		backendHits.Add(1)
		return false
	}
	startGateway(t, fmt.Sprintf(`	forward_auth %s {
		uri /auth
		copy_headers X-User
	}
	stream_proxy /upload* %s {
		max_body_size 1GiB
	}`, auth.Listener.Addr(), be.URL))

	parts := []formPart{
		{field: "model", value: "whisper-large"},
		{field: "audio", filename: "talk.wav", contentType: "audio/wav", size: 64 << 20, seed: 23},
	}

	// send posts the form with the given Authorization.
	send := func(t *testing.T, authorization string) (*http.Response, string, int64, int64) {
		t.Helper()
		tr := &http.Transport{}
		t.Cleanup(tr.CloseIdleConnections)
		c := &http.Client{Transport: tr, Timeout: 2 * time.Minute}
		rc, ct, length := formBody(parts)
		body := &countingBody{ReadCloser: rc}
		req, err := http.NewRequest(http.MethodPost, gatewayURL+"/upload", body)
		if err != nil {
			t.Fatal(err)
		}
		req.ContentLength = length
		req.Header.Set("Content-Type", ct)
		req.Header.Set("X-User", "mallory") // the client's own claim, never passed on
		if authorization != "" {
			req.Header.Set("Authorization", authorization)
		}
		res, err := c.Do(req)
		if err != nil {
			t.Fatalf("POST: %v", err)
		}
		defer res.Body.Close()
		answer, _ := io.ReadAll(res.Body)
		rc.Close() // ends the form's writer if the transport stopped reading
		return res, string(answer), body.n.Load(), length
	}

	t.Run("denied", func(t *testing.T) {
		res, answer, sent, total := send(t, "Bearer wrong")
		if res.StatusCode != http.StatusUnauthorized || answer != `{"error":"unauthorized"}` {
			t.Fatalf("denied upload: %d %q, want the auth service's 401 and body", res.StatusCode, answer)
		}
		if n := backendHits.Load(); n != 0 {
			t.Fatalf("the upload backend got %d requests for a denied upload, want none", n)
		}
		if n := auth.calls.Load(); n != 1 {
			t.Errorf("the auth service got %d requests, want 1", n)
		}
		if sent >= total {
			t.Errorf("the client sent the whole body (%d bytes) before the denial", sent)
		}
		// What the client's transport took includes what its socket buffers
		// held; the gateway read at most that.
		t.Logf("denied after the client's transport took %d of %d body bytes (%d KiB)", sent, total, sent>>10)
	})

	t.Run("allowed", func(t *testing.T) {
		res, answer, sent, total := send(t, authToken)
		if res.StatusCode != http.StatusOK {
			t.Fatalf("allowed upload: %d %s", res.StatusCode, answer)
		}
		if sent != total {
			t.Errorf("the client sent %d of %d body bytes", sent, total)
		}
		expectComplete(t, be, expected(parts))
		if got := be.received()[0].Header.Values("X-User"); strings.Join(got, ",") != "alice" {
			t.Errorf("the backend got X-User %q, want only the auth service's alice", got)
		}
	})
	if n := auth.bodyBytes.Load(); n != 0 {
		t.Errorf("the auth service was sent %d body bytes, want none (forward_auth asks with a GET)", n)
	}
}
