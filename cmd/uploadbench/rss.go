package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"
)

func runRSS(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("rss", flag.ContinueOnError)
	caddyPath := fs.String("caddy", "", "gateway binary: Caddy with stream_proxy (required)")
	sizes := sizeListFlag{64 * mib, 4 * gib}
	fs.Var(&sizes, "sizes", "file bytes of each upload, in order, comma-separated")
	via := fs.String("via", "sp", "route: sp (stream_proxy) or rp (reverse_proxy, for contrast)")
	mode := fs.String("mode", "forward", "stream_proxy mode: forward, per_part or store")
	storeParent := fs.String("store-dir", "", "store mode: where to make the temporary directory the gateway stores files in (default: the system's temp directory); needs room for one upload")
	files := fs.Int("files", 3, "file parts per upload")
	fields := fs.Int("fields", 2, "text fields per upload")
	seed := fs.Uint64("seed", 1, "seed of the generated contents")
	chunked := fs.Bool("chunked", false, "send chunked instead of with a Content-Length")
	timeout := fs.Duration("timeout", 30*time.Minute, "give up on an upload after this long")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: uploadbench rss -caddy PATH [flags]\n\n"+
			"Starts a fresh gateway, uploads at each size in turn and prints the gateway's peak\n"+
			"RSS (VmHWM) after each: with constant memory it stays flat. Linux only.\n\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkModes([]string{*mode}); err != nil {
		return err
	}
	if *caddyPath == "" || len(sizes) < 1 || len(sizes) > 100 || (*via != "sp" && *via != "rp") {
		fs.Usage()
		return errUsage
	}
	if err := checkCaddy(*caddyPath); err != nil {
		return err
	}

	b, err := startBench(ctx, *caddyPath, []string{*mode}, *storeParent, nil, nil, protoHTTP)
	if err != nil {
		return err
	}
	defer b.Close()
	r := b.spRoute(*mode)
	if *via == "rp" {
		r = b.rpRoute()
	}
	start, err := b.gw.PeakRSS()
	if err != nil {
		return err
	}

	fmt.Printf("gateway peak RSS (VmHWM) through %s, one fresh gateway (pid %d), uploads in this order:\n", r.Name, b.gw.Pid)
	fmt.Printf("  %-26s %8.1f MiB\n", "at start", float64(start)/mib)
	var first, last int64
	for i, size := range sizes {
		body, err := newBody(bodySpec{Seed: *seed, Size: size, Files: *files, Fields: *fields})
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "hashing the %s body...\n", formatBytes(body.Length))
		body.Parts()
		m, err := b.upload(ctx, r, body, *chunked, *timeout, fmt.Sprintf("upload %s via %s", formatBytes(size), r.Name))
		if err != nil {
			return err
		}
		hwm, err := b.gw.PeakRSS()
		if err != nil {
			return err
		}
		if i == 0 {
			first = hwm
		}
		last = hwm
		fmt.Printf("  after a %-18s %8.1f MiB   (%.1f MiB/s, verified)\n", formatBytes(size)+" upload", float64(hwm)/mib, m.MiBps())
	}
	fmt.Printf("difference, after %s vs after %s: %+.1f MiB\n",
		formatBytes(sizes[len(sizes)-1]), formatBytes(sizes[0]), float64(last-first)/mib)
	fmt.Println(machineLine(*caddyPath))
	fmt.Println(commandLine())
	return nil
}
