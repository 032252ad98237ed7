package streamproxy

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// A write blocked on a peer that no longer reads is failed by stop; the
// writes after it fail without touching the connection.
func TestDirectWriterStopFailsBlockedWrite(t *testing.T) {
	conn, _ := tcpPair(t) // the server end never reads
	d := &directWriter{w: conn}
	failed := make(chan error, 1)
	go func() {
		buf := make([]byte, 1<<20)
		for {
			if _, err := d.Write(buf); err != nil {
				failed <- err
				return
			}
		}
	}()
	// The socket buffers (a few MiB) are full well within 300 ms; from then
	// on a write is blocked.
	time.Sleep(300 * time.Millisecond)
	d.mu.Lock()
	writing := d.writing
	d.mu.Unlock()
	if !writing {
		t.Fatal("no write under way")
	}
	d.stop(conn)
	select {
	case err := <-failed:
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("blocked write failed with %v, want a timeout", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the blocked write was not failed")
	}
	if _, err := d.Write([]byte("x")); err != errBackendAnswered {
		t.Fatalf("write after stop: %v, want errBackendAnswered", err)
	}
}

// stop between writes leaves the connection as it is: the body may have been
// whole, and the connection is then reused.
func TestDirectWriterStopBetweenWrites(t *testing.T) {
	conn, peer := tcpPair(t)
	d := &directWriter{w: conn}
	if _, err := d.Write([]byte("whole body")); err != nil {
		t.Fatal(err)
	}
	d.stop(conn)
	if _, err := d.Write([]byte("more")); err != errBackendAnswered {
		t.Fatalf("write after stop: %v, want errBackendAnswered", err)
	}
	// The connection itself still takes writes: no deadline was set on it.
	if _, err := conn.Write([]byte(", next request")); err != nil {
		t.Fatalf("the connection was spoiled: %v", err)
	}
	got := make([]byte, len("whole body, next request"))
	if _, err := io.ReadFull(peer, got); err != nil || string(got) != "whole body, next request" {
		t.Fatalf("peer read %q, %v", got, err)
	}
}

// stop may come before the transport has handed over its writer (the backend
// answered as the body started): the producer's first write fails.
func TestDirectWriterStoppedBeforeItsWriter(t *testing.T) {
	conn, _ := tcpPair(t)
	var d directWriter
	d.stop(nil)
	d.w = conn
	if _, err := d.Write([]byte("x")); err != errBackendAnswered {
		t.Fatalf("first write: %v, want errBackendAnswered", err)
	}
}
