package streamproxy

import (
	"errors"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/streamproxy/caddy-stream-proxy/store/bufpool"
)

// metrics are the handler's Prometheus collectors. They are created once per
// process and registered on the registry of every config that loads, so they
// keep counting across config reloads.
var metrics = struct {
	once        sync.Once
	uploads     *prometheus.CounterVec
	parts       *prometheus.CounterVec
	received    *prometheus.CounterVec
	sent        *prometheus.CounterVec
	rejections  *prometheus.CounterVec
	inFlight    *prometheus.GaugeVec
	partSeconds *prometheus.HistogramVec
	backendTTFB *prometheus.HistogramVec
}{}

// Outcomes of an upload, the `outcome` label.
const (
	outcomeOK           = "ok"            // the backend answered below 400, or the files were stored
	outcomeBackendError = "backend_error" // the backend answered 400 or above
	outcomeRefused      = "refused"       // the gateway refused it (a 4xx of its own)
	outcomeClientGone   = "client_gone"   // the client went away or stopped sending
	outcomeFailed       = "failed"        // the backend or the store failed (a 5xx of the gateway's)
)

func initMetrics(registry *prometheus.Registry) error {
	const ns, sub = "caddy", "stream_proxy"
	metrics.once.Do(func() {
		counter := func(name, help string, labels ...string) *prometheus.CounterVec {
			return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help}, labels)
		}
		seconds := func(name, help string) *prometheus.HistogramVec {
			return prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help,
				Buckets: prometheus.ExponentialBuckets(0.001, 4, 10), // 1 ms to 4.4 min
			}, []string{"mode"})
		}
		metrics.uploads = counter("uploads_total", "Multipart uploads handled, by mode and outcome.", "mode", "outcome")
		metrics.parts = counter("parts_total", "Parts read, by mode and outcome (ok, or failed when the upload ended inside the part).", "mode", "outcome")
		metrics.received = counter("received_bytes_total", "Request body bytes read from clients.", "mode")
		metrics.sent = counter("sent_bytes_total", "Part data bytes delivered to backends or to the store.", "mode")
		metrics.rejections = counter("rejections_total", "Uploads refused or failed, by error code (see the README).", "mode", "reason")
		metrics.inFlight = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "uploads_in_flight",
			Help: "Uploads being handled now."}, []string{"mode"})
		metrics.partSeconds = seconds("part_duration_seconds", "Time from a part's header to its end.")
		metrics.backendTTFB = seconds("backend_ttfb_seconds", "Time from the start of a backend request to its response header.")
	})
	for _, c := range []prometheus.Collector{
		metrics.uploads, metrics.parts, metrics.received, metrics.sent, metrics.rejections,
		metrics.inFlight, metrics.partSeconds, metrics.backendTTFB, bufpool.InUse, bufpool.Waits,
	} {
		if err := registry.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}
