package integration

// Crashes and outages of the stores (integration/README.md, faults × modes):
// a gateway killed mid-upload into the file store; S3 killed mid-upload and
// back seconds later; S3 credentials of least privilege.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/streamproxy/caddy-stream-proxy/integration/versitygwtest"
)

// buildCaddy builds ./cmd/caddy into a temporary directory, for tests that
// kill a gateway process.
func buildCaddy(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "caddy")
	out, err := exec.Command("go", "build", "-o", bin, "../cmd/caddy").CombinedOutput()
	if err != nil {
		t.Fatalf("building caddy: %v\n%s", err, out)
	}
	return bin
}

// freePort returns a loopback port nothing listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// gatewayProcess is a Caddy process serving site on its own port.
type gatewayProcess struct {
	bin, config, home string
	port              int
	cmd               *exec.Cmd
	// started, if not nil, is called with the process once it runs, before
	// its port answers (to set its limits).
	started func(t *testing.T, p *os.Process)
}

func newGatewayProcess(t *testing.T, bin, site string) *gatewayProcess {
	t.Helper()
	g := gatewayProcessFor(t, bin, site)
	g.start(t)
	return g
}

// gatewayProcessFor is newGatewayProcess not started yet.
func gatewayProcessFor(t *testing.T, bin, site string) *gatewayProcess {
	t.Helper()
	g := &gatewayProcess{bin: bin, port: freePort(t), home: t.TempDir()}
	g.config = filepath.Join(g.home, "Caddyfile")
	cfg := fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n}\nhttp://127.0.0.1:%d {\n%s\n}\n", g.port, site)
	if err := os.WriteFile(g.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.kill)
	return g
}

// start runs the process and waits for its port to answer, which it does
// once its configuration is provisioned.
func (g *gatewayProcess) start(t *testing.T) {
	t.Helper()
	g.cmd = exec.Command(g.bin, "run", "--config", g.config, "--adapter", "caddyfile")
	g.cmd.Env = append(os.Environ(), "HOME="+g.home, "XDG_DATA_HOME="+g.home, "XDG_CONFIG_HOME="+g.home)
	g.cmd.Stderr = &testLog{t: t, prefix: fmt.Sprintf("caddy :%d: ", g.port)}
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if g.started != nil {
		g.started(t, g.cmd.Process)
	}
	waitFor(t, "caddy to listen on "+g.addr(), func() bool {
		c, err := net.Dial("tcp", g.addr())
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// kill ends the process with SIGKILL, as a crash would.
func (g *gatewayProcess) kill() {
	if g.cmd != nil && g.cmd.Process != nil {
		_ = g.cmd.Process.Kill()
		_ = g.cmd.Wait()
		g.cmd = nil
	}
}

func (g *gatewayProcess) addr() string { return fmt.Sprintf("127.0.0.1:%d", g.port) }

// testLog passes a process's log lines to the test's, which shows them on
// failure (or with -v).
type testLog struct {
	t      *testing.T
	prefix string
}

func (l *testLog) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		l.t.Log(l.prefix + line)
	}
	return len(p), nil
}

// heldUpload posts a form with one file to url, whose first size bytes are
// sent at once; the rest, and the form's end, wait until finish is closed.
// The answer (status -1 if none) comes on the returned channel.
func heldUpload(t *testing.T, url string, size int64, finish <-chan struct{}) <-chan answer {
	t.Helper()
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		fw, err := mw.CreateFormFile("file", "big.bin")
		if err == nil {
			_, err = io.Copy(fw, io.LimitReader(newFileData(size, 7), size))
		}
		if err == nil {
			<-finish
			_, err = io.Copy(fw, io.LimitReader(newFileData(1<<20, 8), 1<<20))
		}
		if err == nil {
			err = mw.Close()
		}
		pw.CloseWithError(err)
	}()
	done := make(chan answer, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, url, pr)
		req.Header.Set("Content-Type", mw.FormDataContentType())
		tr := &http.Transport{}
		defer tr.CloseIdleConnections()
		res, err := (&http.Client{Transport: tr}).Do(req)
		pr.CloseWithError(io.ErrClosedPipe)
		if err != nil {
			done <- answer{status: -1}
			return
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		done <- answer{status: res.StatusCode, body: body}
	}()
	return done
}

type answer struct {
	status int
	body   []byte
}

// tempFiles lists the file store's temporary files with their sizes.
func tempFiles(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dir, ".partial"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	files := map[string]int64{}
	for _, e := range entries {
		if fi, err := e.Info(); err == nil {
			files[e.Name()] = fi.Size()
		}
	}
	return files
}

// waitTempFile waits for a temporary file other than those in known to hold
// at least n bytes, and returns its name.
func waitTempFile(t *testing.T, dir string, known map[string]int64, n int64) string {
	t.Helper()
	var found string
	if !waitUntil(func() bool {
		for name, size := range tempFiles(t, dir) {
			if _, ok := known[name]; !ok && size >= n {
				found = name
				return true
			}
		}
		return false
	}) {
		t.Fatalf("no temporary file of %d bytes: %v", n, tempFiles(t, dir))
	}
	return found
}

// integration/README.md, row 48: a gateway killed (SIGKILL) mid-upload into
// the file store leaves its temporary file; its next start removes it, but
// not the one a second gateway, alive, is writing into the same directory,
// which that gateway then commits.
func TestFaultFileStoreCrash(t *testing.T) {
	bin := buildCaddy(t)
	dir := t.TempDir()
	site := fmt.Sprintf("\tstream_proxy /upload* {\n\t\tmode store\n\t\tstore %s\n\t}", dir)
	a := newGatewayProcess(t, bin, site)
	b := newGatewayProcess(t, bin, site)

	finishA, finishB := make(chan struct{}), make(chan struct{})
	doneA := heldUpload(t, "http://"+a.addr()+"/upload", 8<<20, finishA)
	tmpA := waitTempFile(t, dir, nil, 4<<20)
	doneB := heldUpload(t, "http://"+b.addr()+"/upload", 8<<20, finishB)
	tmpB := waitTempFile(t, dir, map[string]int64{tmpA: 0}, 4<<20)

	a.kill()
	close(finishA) // Go's client returns once its body's writer does
	if a := <-doneA; a.status != -1 {
		t.Fatalf("the killed gateway's client got %d", a.status)
	}
	if _, ok := tempFiles(t, dir)[tmpA]; !ok {
		t.Fatalf("the crash left no temporary file: %v", tempFiles(t, dir))
	}

	a.start(t)
	left := tempFiles(t, dir)
	if _, ok := left[tmpA]; ok {
		t.Errorf("the crashed upload's temporary file is still there after the restart: %v", left)
	}
	if _, ok := left[tmpB]; !ok {
		t.Fatalf("the restart removed the temporary file a live gateway writes: %v", left)
	}

	close(finishB)
	if a := <-doneB; a.status != http.StatusCreated {
		t.Fatalf("the live gateway's upload: status %d: %s", a.status, a.body)
	}
	stored := storeLeft(t, dir)
	if len(stored) != 1 || strings.Contains(stored[0], ".partial") {
		t.Fatalf("stored: %v, want the live gateway's file alone", stored)
	}
	if fi, err := os.Stat(filepath.Join(dir, stored[0])); err != nil || fi.Size() != 9<<20 {
		t.Fatalf("the live gateway's file: %v %v", fi, err)
	}
}

// integration/README.md, row 49: S3 killed (SIGKILL) mid-upload and back
// seconds later, on the same port and root: the client gets 503
// store_unavailable at once, and the multipart upload the gateway could not
// abort during the outage is aborted once S3 is back, within cleanup_budget.
func TestFaultS3OutageMidUpload(t *testing.T) {
	s := startS3(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* {
	mode store
	%s
}`, s.site(t, s.endpoint, "cleanup_budget 90s")))

	finish := make(chan struct{})
	done := heldUpload(t, gatewayURL+"/upload", 12<<20, finish)
	waitFor(t, "a multipart upload", func() bool { return len(s.uploads(t)) > 0 })

	s.Kill()
	close(finish)
	got := <-done
	if e := decodeError(t, got.body); got.status != http.StatusServiceUnavailable || e.Error.Code != "store_unavailable" {
		t.Fatalf("client got %d %s, want 503 store_unavailable", got.status, got.body)
	}
	// The outage lasts a while after the client's answer, so that the
	// cleanup's first tries fail: the scenario under test, not a wait.
	time.Sleep(2 * time.Second)
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	if len(s.uploads(t)) == 0 {
		t.Fatal("the multipart upload did not survive the restart: nothing to clean up")
	}

	deadline := time.Now().Add(90 * time.Second) // cleanup_budget
	for {
		ups, objs := s.uploads(t), s.objects(t)
		if len(ups) == 0 && len(objs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("left after the cleanup budget: multipart uploads %v, objects %v", ups, objs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// integration/README.md, row 48: S3 makes a multipart upload and its answer
// is lost on the way back (the connection drops), so the gateway never learns
// the upload's id: the client gets 503, and the cleanup finds the upload (and
// those the SDK's retries made) by its key and aborts it.
func TestFaultS3CreateAnswerLost(t *testing.T) {
	s := startS3(t)
	target, err := url.Parse(s.endpoint)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	var made atomic.Int32
	lossy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Query().Has("uploads") {
			rec := httptest.NewRecorder()
			rp.ServeHTTP(rec, r) // S3 makes the upload...
			if rec.Code == http.StatusOK {
				made.Add(1)
			}
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				conn.Close() // ...and its answer never arrives
			}
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(lossy.Close)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* {
	mode store
	%s
}`, s.site(t, lossy.URL, "cleanup_budget 30s")))

	res, body := postForm(t, http.DefaultClient, gatewayURL+"/upload",
		[]formPart{{field: "file", filename: "a.bin", size: 1 << 20, seed: 48}}, false)
	if e := decodeError(t, body); res.StatusCode != http.StatusServiceUnavailable || e.Error.Code != "store_unavailable" {
		t.Fatalf("client got %d %s, want 503 store_unavailable", res.StatusCode, body)
	}
	if made.Load() == 0 {
		t.Fatal("no multipart upload was made: the fault did not happen")
	}
	s.empty(t)
}

// ingestPolicy lets user write into the bucket and undo its writes, and
// nothing else: no s3:GetObject (so no copy of an object onto itself), no
// s3:ListBucket (so no HeadBucket).
func ingestPolicy(user string) string {
	return fmt.Sprintf(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":[%q]},`+
		`"Action":["s3:PutObject","s3:AbortMultipartUpload","s3:DeleteObject"],"Resource":["arn:aws:s3:::%s/*"]}]}`, user, s3Bucket)
}

// startS3IAM is startS3 with versitygw's own IAM service, so that users
// other than root, and bucket policies, can be tried.
func startS3IAM(t *testing.T) *s3Server {
	t.Helper()
	t.Setenv("VGW_IAM_DIR", t.TempDir())
	return startS3(t)
}

// integration/README.md, row 51: credentials allowed only to put, abort and
// delete: the bucket probe is refused (403) and does not fail the upload; the
// copy that adds digests to a multi-part object's metadata is refused, and
// the object stays without them; every file is stored, with its digests in
// the answer.
func TestFaultS3LeastPrivilege(t *testing.T) {
	s := startS3IAM(t)
	const user, secret = "ingest", "ingest-secret-0123456789"
	if out, err := exec.Command(versitygwtest.Path(t), "admin", "--access", s3Key, "--secret", s3Secret,
		"--endpoint-url", s.endpoint, "create-user", "--access", user, "--secret", secret, "--role", "user").CombinedOutput(); err != nil {
		t.Fatalf("creating the user: %v\n%s", err, out)
	}
	if _, err := s.client.PutBucketPolicy(context.Background(), &s3.PutBucketPolicyInput{
		Bucket: aws.String(s3Bucket), Policy: aws.String(ingestPolicy(user))}); err != nil {
		t.Fatalf("setting the bucket policy: %v", err)
	}
	// What the user may and may not do, seen by the user.
	uc := s3.New(s3.Options{BaseEndpoint: aws.String(s.endpoint), Region: "us-east-1", UsePathStyle: true,
		Credentials:                credentials.NewStaticCredentialsProvider(user, secret, ""),
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired})
	if _, err := uc.HeadBucket(context.Background(), &s3.HeadBucketInput{Bucket: aws.String(s3Bucket)}); err == nil {
		t.Fatal("the user may HeadBucket: the policy does not restrict it")
	}

	t.Setenv("SP_TEST_S3_INGEST", secret)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* {
	mode store
	hash sha256
	store s3 {
		bucket %s
		endpoint %s
		use_path_style
		access_key_id %s
		secret_access_key {env.SP_TEST_S3_INGEST}
		part_size 5MiB
	}
}`, s3Bucket, s.endpoint, user))
	c := newClient(t)
	form := []formPart{{field: "big", filename: "big.bin", size: 12 << 20, seed: 1}, {field: "small", filename: "small.bin", size: 1000, seed: 2}}
	res, body := postForm(t, c, gatewayURL+"/upload", form, false)
	if res.StatusCode != http.StatusCreated {
		t.Fatalf("status %d: %s", res.StatusCode, body)
	}
	var answer objectAnswer
	if err := json.Unmarshal(body, &answer); err != nil || len(answer.Parts) != 2 {
		t.Fatalf("answer: %v: %s", err, body)
	}
	for i, p := range answer.Parts {
		sum, _, meta := s.object(t, p.Key)
		h := sha256.New()
		io.Copy(h, newFileData(form[i].size, form[i].seed))
		if want := hex.EncodeToString(h.Sum(nil)); sum != p.Digests["sha256"] || sum != want {
			t.Errorf("%s: stored sha256 %s, answered %s", p.Field, sum, p.Digests["sha256"])
		}
		_, has := meta["sha256"]
		if want := p.Field == "small"; has != want {
			t.Errorf("%s: digest in the metadata: %v, want %v (%v)", p.Field, has, want, meta)
		}
	}
	if ups := s.uploads(t); len(ups) > 0 {
		t.Fatalf("multipart uploads left: %v", ups)
	}
	keys := s.objects(t)
	slices.Sort(keys)
	if len(keys) != 2 {
		t.Fatalf("objects: %v", keys)
	}
}
