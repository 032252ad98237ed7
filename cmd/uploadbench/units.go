package main

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
)

const (
	kib = 1 << 10
	mib = 1 << 20
	gib = 1 << 30
)

// parseSize reads a byte count as the Caddyfile does (go-humanize): "1GiB",
// "10MB", "1.5GiB", "4096". KiB, MiB, GiB, TiB are powers of 1024; K, KB,
// M, MB and so on powers of 1000. Case does not matter.
func parseSize(s string) (int64, error) {
	n, err := humanize.ParseBytes(s)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q (want e.g. 1GiB, 10MB, 4096)", s)
	}
	if n > math.MaxInt64 {
		return 0, fmt.Errorf("size %q out of range", s)
	}
	return int64(n), nil
}

// formatBytes writes n in binary units, e.g. "1.00 GiB".
func formatBytes(n int64) string {
	switch {
	case n >= gib:
		return fmt.Sprintf("%.2f GiB", float64(n)/gib)
	case n >= mib:
		return fmt.Sprintf("%.2f MiB", float64(n)/mib)
	case n >= kib:
		return fmt.Sprintf("%.2f KiB", float64(n)/kib)
	}
	return fmt.Sprintf("%d B", n)
}

// exactSize writes n in the largest binary unit that divides it, e.g. "2GiB".
func exactSize(n int64) string {
	for _, u := range []struct {
		suffix string
		factor int64
	}{{"TiB", 1 << 40}, {"GiB", gib}, {"MiB", mib}, {"KiB", kib}} {
		if n != 0 && n%u.factor == 0 {
			return strconv.FormatInt(n/u.factor, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

// mibPerSec is the rate of n bytes moved in d.
func mibPerSec(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / mib / d.Seconds()
}

// sizeFlag is a flag.Value holding a byte count.
type sizeFlag int64

func (s *sizeFlag) String() string { return exactSize(int64(*s)) }

func (s *sizeFlag) Set(v string) error {
	n, err := parseSize(v)
	*s = sizeFlag(n)
	return err
}

// sizeListFlag is a flag.Value holding comma-separated byte counts.
type sizeListFlag []int64

func (l *sizeListFlag) String() string {
	parts := make([]string, len(*l))
	for i, n := range *l {
		parts[i] = exactSize(n)
	}
	return strings.Join(parts, ",")
}

func (l *sizeListFlag) Set(v string) error {
	*l = nil
	for _, s := range strings.Split(v, ",") {
		n, err := parseSize(s)
		if err != nil {
			return err
		}
		*l = append(*l, n)
	}
	return nil
}

// parseFlags parses args into fs. It returns errUsage for bad flags and
// flag.ErrHelp for -h; the flag package has printed the message either way.
func parseFlags(fs *flag.FlagSet, args []string) error {
	err := fs.Parse(args)
	if err == nil && fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "unexpected arguments: %q\n", fs.Args())
		fs.Usage()
		err = errUsage
	}
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		return errUsage
	}
	return err
}
