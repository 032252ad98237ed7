// Command uploadbench is the load generator and the counting backend used to
// benchmark stream_proxy against Caddy's reverse_proxy. It only ever talks to
// the URLs it is given (compare and rss only to 127.0.0.1).
//
// Usage:
//
//	uploadbench backend -listen 127.0.0.1:9001
//	    A counting backend. Multipart POST/PUT: answers the size and SHA-256
//	    of every part, read streaming (400 if the form is malformed or
//	    truncated). Other POST/PUT: the size and SHA-256 of the raw body and
//	    its X-Stream-Proxy-* headers. GET /download/<size>: that many
//	    deterministic pseudo-random bytes. GET /healthz: ok.
//
//	uploadbench upload -url URL [-size 1GiB] [-files 3] [-fields 2]
//	    [-concurrency 1] [-chunked] [-verify] [-proto http|h1|h2|h3]
//	    Generates a multipart/form-data body on the fly (text fields, then
//	    files of pseudo-random bytes), uploads it and prints the status, the
//	    rate and the answer. -verify checks the backend's digests.
//
//	uploadbench compare -caddy PATH [-size 2GiB] [-runs 5] [-modes forward]
//	    [-out table|markdown] [-store-dir DIR]
//	    Starts the counting backend and the gateway at PATH, uploads the same
//	    body directly, through reverse_proxy and through stream_proxy in each
//	    mode (forward, per_part, store), interleaved, verifies every upload
//	    and prints one table: MiB/s, gateway CPU seconds per GiB, the same for
//	    uploadbench itself (client and backend), gateway peak RSS. Store mode has no backend: the gateway writes the files to a
//	    temporary directory made in DIR, checked against its 201 answer's
//	    digests by size on disk and emptied after each upload.
//
//	uploadbench rss -caddy PATH [-sizes 64MiB,4GiB] [-mode forward]
//	    Starts a fresh gateway, uploads through stream_proxy at each size in
//	    turn and prints the gateway's peak RSS (VmHWM) after each: memory
//	    should stay flat whatever the upload size.
//
//	uploadbench slow -caddy PATH [-n 3000] [-rate 4KiB] [-duration 15s] [-via rp,sp]
//	    Holds n uploads open at once, each a small form trickled at rate,
//	    into a discarding backend, through reverse_proxy and stream_proxy,
//	    each in a fresh gateway, and prints the gateway's RSS per upload
//	    (peak minus idle) and how many uploads failed.
//
// Each subcommand takes -h for its flags. compare and rss need Linux (/proc).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

type subcommand struct {
	name string
	run  func(ctx context.Context, args []string) error
}

var subcommands = []subcommand{
	{"backend", runBackend},
	{"upload", runUpload},
	{"compare", runCompare},
	{"rss", runRSS},
	{"slow", runSlow},
}

const usageText = `usage: uploadbench <subcommand> [flags]

  backend -listen 127.0.0.1:9001
      the counting backend: multipart uploads get the size and sha256 of each
      part (400 if malformed or truncated), other uploads those of the raw body;
      GET /download/<size> streams bytes; GET /healthz answers ok
  upload -url URL [-size 1GiB] [-files 3] [-fields 2] [-concurrency 1] [-chunked] [-verify] [-proto http|h1|h2|h3]
      upload a generated multipart body; print status, MiB/s and the answer
  compare -caddy PATH [-size 2GiB] [-runs 5] [-modes forward,per_part,store] [-out table|markdown]
      benchmark direct vs reverse_proxy vs stream_proxy through a gateway it starts
  rss -caddy PATH [-sizes 64MiB,4GiB] [-mode forward|per_part|store]
      a fresh gateway's peak RSS after a small and after a large upload
  slow -caddy PATH [-n 3000] [-rate 4KiB] [-duration 15s] [-via rp,sp]
      the gateway's RSS per upload with n slow uploads held open at once

Run 'uploadbench <subcommand> -h' for all of its flags.
`

func usage() {
	fmt.Fprint(os.Stderr, usageText)
}

func main() {
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "-help" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage()
		if len(os.Args) < 2 {
			os.Exit(2)
		}
		return
	}
	var cmd *subcommand
	for i := range subcommands {
		if subcommands[i].name == os.Args[1] {
			cmd = &subcommands[i]
		}
	}
	if cmd == nil {
		fmt.Fprintf(os.Stderr, "uploadbench: unknown subcommand %q\n\n", os.Args[1])
		usage()
		os.Exit(2)
	}

	// A closed stdout (| head) must not kill us before the cleanups below:
	// with SIGPIPE ignored, writes to it fail instead.
	signal.Ignore(syscall.SIGPIPE)
	// Ctrl-C and SIGTERM cancel ctx; the subcommand then returns, running its
	// deferred cleanups (gateway killed, temp files removed) before we exit.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cmd.run(ctx, os.Args[2:])
	interrupted := ctx.Err() != nil
	stop()
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
	case errors.Is(err, errUsage):
		os.Exit(2)
	case interrupted:
		fmt.Fprintf(os.Stderr, "uploadbench %s: interrupted\n", cmd.name)
		os.Exit(130)
	default:
		fmt.Fprintf(os.Stderr, "uploadbench %s: %v\n", cmd.name, err)
		os.Exit(1)
	}
}

// errUsage is returned for bad flags; the flag package has already said why.
var errUsage = errors.New("usage")
