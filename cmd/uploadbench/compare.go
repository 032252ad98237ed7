package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// pathStats gathers the measurements of one route.
type pathStats struct {
	*route
	rates   []float64 // MiB/s of each run
	cpu     float64   // gateway CPU seconds over all runs
	bench   float64   // client and backend CPU seconds over all runs
	moved   int64     // body bytes over all runs
	peakRSS int64     // gateway VmHWM, max over the runs
}

func runCompare(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("compare", flag.ContinueOnError)
	caddyPath := fs.String("caddy", "", "gateway binary: Caddy with stream_proxy (required)")
	size := sizeFlag(2 * gib)
	fs.Var(&size, "size", "total bytes of file content per upload")
	runs := fs.Int("runs", 5, "uploads per path (1-1000)")
	modes := fs.String("modes", "forward", "stream_proxy modes to measure, comma-separated (forward, per_part, store, store-s3, store-azure)")
	versitygw := fs.String("versitygw", "bin/versitygw", "store-s3: the versitygw binary, run on a free loopback port with a temporary directory")
	s3PartSize := sizeFlag(8 * mib)
	fs.Var(&s3PartSize, "s3-part-size", "store-s3: part_size of the gateway and of the direct SDK uploads")
	s3Buffers := fs.Int("s3-buffers", 32, "store-s3: the gateway's max_buffers")
	azurite := fs.String("azurite", "integration/azurite/node_modules/.bin/azurite-blob", "store-azure: Azurite's blob service, run on a free loopback port with a temporary directory")
	azBlockSize := sizeFlag(8 * mib)
	fs.Var(&azBlockSize, "azure-block-size", "store-azure: block_size of the gateway and of the direct SDK uploads")
	azBuffers := fs.Int("azure-buffers", 32, "store-azure: the gateway's max_buffers")
	storeParent := fs.String("store-dir", "", "store mode: where to make the temporary directory the gateway stores files in (default: the system's temp directory); needs room for one upload")
	out := fs.String("out", "table", "output format: table or markdown")
	files := fs.Int("files", 3, "file parts per upload")
	fields := fs.Int("fields", 2, "text fields per upload")
	seed := fs.Uint64("seed", 1, "seed of the generated contents")
	chunked := fs.Bool("chunked", false, "send chunked instead of with a Content-Length")
	proto := fs.String("proto", protoHTTP, "to the gateway: http (plain HTTP/1.1), or over HTTPS with tls internal: h1 (HTTP/1.1), h2 (HTTP/2), h3 (HTTP/3); direct is always plain HTTP")
	warmup := sizeFlag(16 * mib)
	fs.Var(&warmup, "warmup", "file bytes of one uncounted upload per path before the runs (0: none)")
	timeout := fs.Duration("timeout", 30*time.Minute, "give up on an upload after this long")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: uploadbench compare -caddy PATH [flags]\n\n"+
			"Starts the counting backend and the gateway, uploads the same body directly, through\n"+
			"reverse_proxy (/rp/) and through stream_proxy (/sp/, /sp-<mode>/), interleaved, verifies\n"+
			"every upload and prints one table. Store mode writes the files to a temporary directory,\n"+
			"removed after each upload. Linux only (reads /proc).\n\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	modeList := strings.Split(*modes, ",")
	if err := checkModes(modeList); err != nil {
		return err
	}
	if err := checkProto(*proto); err != nil {
		return err
	}
	if *caddyPath == "" || *runs < 1 || *runs > 1000 || (*out != "table" && *out != "markdown") {
		fs.Usage()
		return errUsage
	}
	if err := checkCaddy(*caddyPath); err != nil {
		return err
	}

	spec := bodySpec{Seed: *seed, Size: int64(size), Files: *files, Fields: *fields}
	body, err := newBody(spec)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "hashing the %s body...\n", formatBytes(body.Length))
	body.Parts()

	b, err := startBench(ctx, *caddyPath, modeList, *storeParent,
		&s3Options{versitygw: *versitygw, partSize: int64(s3PartSize), buffers: *s3Buffers},
		&azureOptions{azurite: *azurite, blockSize: int64(azBlockSize), buffers: *azBuffers}, *proto)
	if err != nil {
		return err
	}
	defer b.Close()
	idleRSS, err := b.gw.PeakRSS()
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "gateway pid %d on %s, backend on %s\n", b.gw.Pid, b.gw.URL, b.direct)

	var paths []*pathStats
	for _, r := range b.routes(modeList) {
		paths = append(paths, &pathStats{route: r})
	}
	if warmup > 0 {
		spec.Size = int64(warmup)
		wb, err := newBody(spec)
		if err != nil {
			return err
		}
		for _, p := range paths {
			if _, err := b.upload(ctx, p.route, wb, *chunked, *timeout, "warm-up "+p.Name); err != nil {
				return err
			}
		}
	}

	// VmHWM is reset before each upload through the gateway, so that each
	// path's peak is its own; without clear_refs it is cumulative.
	rssReset := b.gw.ResetPeakRSS() == nil
	for run := 1; run <= *runs; run++ {
		// Each run starts one path later than the one before, so that no path
		// always follows the same one (and, say, the disk writeback of store
		// mode's files).
		for i := range paths {
			p := paths[(i+run-1)%len(paths)]
			if p.viaGateway && rssReset {
				if err := b.gw.ResetPeakRSS(); err != nil {
					return err
				}
			}
			label := fmt.Sprintf("run %d/%d %s", run, *runs, p.Name)
			m, err := b.upload(ctx, p.route, body, *chunked, *timeout, label)
			if err != nil {
				return err
			}
			p.rates = append(p.rates, m.MiBps())
			p.cpu += m.CPU
			p.bench += m.BenchCPU
			p.moved += m.Sent
			if p.viaGateway {
				rss, err := b.gw.PeakRSS()
				if err != nil {
					return err
				}
				p.peakRSS = max(p.peakRSS, rss)
			}
			fmt.Fprintf(os.Stderr, "%-32s %8.1f MiB/s  verified\n", label, m.MiBps())
		}
	}

	framing := "Content-Length"
	if *chunked {
		framing = "chunked"
	}
	framing += ", to the gateway " + map[string]string{protoHTTP: "plain HTTP/1.1", protoH1: "HTTPS (tls internal) HTTP/1.1",
		protoH2: "HTTPS (tls internal) HTTP/2", protoH3: "HTTPS (tls internal) HTTP/3"}[*proto]
	rssNote := "reset before each upload, max over the path's runs"
	if !rssReset {
		rssNote = "cumulative (clear_refs unavailable)"
	}
	notes := []string{
		fmt.Sprintf("body: %d files + %d fields, %s of files, %d bytes with framing, %s, seed %d; "+
			"%d runs per path, interleaved (each run's order rotated by one path), after a %s warm-up upload per path; every upload verified (size and sha256 of each part as the backend saw it)",
			*files, *fields, formatBytes(int64(size)), body.Length, framing, *seed, *runs, formatBytes(int64(warmup))),
		fmt.Sprintf("CPU s/GiB: gateway utime+stime (/proc/PID/stat) per GiB of body; client+backend: the same of uploadbench itself, which sends the body and runs the backend; "+
			"peak RSS: gateway VmHWM, %s; idle gateway VmHWM %.1f MiB", rssNote, float64(idleRSS)/mib),
	}
	if b.gw.StoreDir != "" {
		notes = append(notes, fmt.Sprintf("store: stream_proxy without a backend writes each file, fsynced, to a temporary directory in %s "+
			"and answers 201 with JSON; verified by the answer (size and sha256 of each file as the gateway hashed it while writing, "+
			"text fields' values) and each stored file's size on disk (stat); the files are removed after each upload, outside the timing",
			filepath.Dir(b.gw.StoreDir)))
	}
	// The ratio of medians of a store path to its direct SDK path.
	storeRatio := func(store string) float64 {
		var sp, direct float64
		for _, p := range paths {
			switch p.mode {
			case store:
				sp = median(p.rates)
			case directModes[store]:
				direct = median(p.rates)
			}
		}
		return sp / direct
	}
	if b.stores[modeStoreS3] != nil {
		notes = append(notes, fmt.Sprintf("store-s3: stream_proxy (store s3, part_size %s, max_buffers %d) into a versitygw on loopback (posix backend, in %s), "+
			"beside \"S3 direct (SDK)\": the same file bytes uploaded straight to it by the AWS SDK, one multipart upload per file, "+
			"%s parts, %d in flight per file, as the gateway; ratio of medians stream_proxy store-s3 / S3 direct = %.2f; "+
			"every object read back and checked (size, sha256) after the timing, then deleted",
			formatBytes(int64(s3PartSize)), *s3Buffers, os.TempDir(), formatBytes(int64(s3PartSize)), s3PartsInFlight, storeRatio(modeStoreS3)))
	}
	if b.stores[modeStoreAzure] != nil {
		notes = append(notes, fmt.Sprintf("store-azure: stream_proxy (store azure, block_size %s, max_buffers %d) into Azurite on loopback (its data in %s), "+
			"beside \"Azure direct (SDK)\": the same file bytes staged straight into it by azblob, one block blob per file, "+
			"%s blocks, %d in flight per file, then Put Block List, as the gateway; ratio of medians stream_proxy store-azure / Azure direct = %.2f; "+
			"every blob read back and checked (size, sha256) after the timing, then deleted",
			formatBytes(int64(azBlockSize)), *azBuffers, os.TempDir(), formatBytes(int64(azBlockSize)), azureBlocksInFlight, storeRatio(modeStoreAzure)))
	}
	notes = append(notes, machineLine(*caddyPath), commandLine())
	printTable(os.Stdout, *out, paths, notes)
	return nil
}

// printTable writes one row per path, then the notes.
func printTable(w io.Writer, format string, paths []*pathStats, notes []string) {
	var rpMedian float64
	for _, p := range paths {
		if p.Name == "reverse_proxy" {
			rpMedian = median(p.rates)
		}
	}
	header := []string{"path", "MiB/s median", "spread (min–max)", "ratio to reverse_proxy", "CPU s/GiB", "client+backend CPU s/GiB", "peak RSS MiB"}
	var rows [][]string
	for _, p := range paths {
		cpu, rss := "-", "-"
		if p.viaGateway {
			cpu = fmt.Sprintf("%.2f", p.cpu/(float64(p.moved)/gib))
			rss = fmt.Sprintf("%.1f", float64(p.peakRSS)/mib)
		}
		benchCPU := fmt.Sprintf("%.2f", p.bench/(float64(p.moved)/gib))
		ratio := "-"
		if rpMedian > 0 {
			ratio = fmt.Sprintf("%.2f", median(p.rates)/rpMedian)
		}
		rows = append(rows, []string{
			p.Name,
			fmt.Sprintf("%.1f", median(p.rates)),
			fmt.Sprintf("%.1f–%.1f", slices.Min(p.rates), slices.Max(p.rates)),
			ratio, cpu, benchCPU, rss,
		})
	}

	if format == "markdown" {
		fmt.Fprintf(w, "| %s |\n|%s\n", strings.Join(header, " | "), strings.Repeat(" --- |", len(header)))
		for _, r := range rows {
			fmt.Fprintf(w, "| %s |\n", strings.Join(r, " | "))
		}
		fmt.Fprintln(w)
		for _, n := range notes {
			fmt.Fprintf(w, "%s\n\n", n)
		}
		return
	}
	// Plain text: the path left-aligned, the numbers right-aligned.
	widths := make([]int, len(header))
	for _, r := range append([][]string{header}, rows...) {
		for i, c := range r {
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	for _, r := range append([][]string{header}, rows...) {
		var sb strings.Builder
		for i, c := range r {
			pad := strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c))
			if i == 0 {
				sb.WriteString(c + pad)
			} else {
				sb.WriteString(" | " + pad + c)
			}
		}
		fmt.Fprintln(w, sb.String())
	}
	for _, n := range notes {
		fmt.Fprintln(w, n)
	}
}

// median of xs, which must not be empty.
func median(xs []float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
