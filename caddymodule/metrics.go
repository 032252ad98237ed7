package streamproxy

import (
	"errors"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
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
	bufInUse    prometheus.Gauge   // store s3: part buffers in use
	bufWaits    prometheus.Counter // store s3: uploads that waited for one
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
		modeOutcome := []string{"mode", "outcome"}
		mode := []string{"mode"}
		metrics.uploads = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "uploads_total",
			Help: "Multipart uploads handled, by mode and outcome.",
		}, modeOutcome)
		metrics.parts = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "parts_total",
			Help: "Parts read, by mode and outcome (ok, or failed when the upload ended inside the part).",
		}, modeOutcome)
		metrics.received = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "received_bytes_total",
			Help: "Request body bytes read from clients.",
		}, mode)
		metrics.sent = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "sent_bytes_total",
			Help: "Part data bytes delivered to backends or to the store.",
		}, mode)
		metrics.rejections = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "rejections_total",
			Help: "Uploads refused or failed, by error code (see the README).",
		}, []string{"mode", "reason"})
		metrics.inFlight = prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "uploads_in_flight",
			Help: "Uploads being handled now.",
		}, mode)
		metrics.partSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "part_duration_seconds",
			Help:    "Time from a part's header to its end.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10), // 1 ms to 4.4 min
		}, mode)
		metrics.backendTTFB = prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "backend_ttfb_seconds",
			Help:    "Time from the start of a backend request to its response header.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, mode)
		metrics.bufInUse = prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "store_buffers_in_use",
			Help: "S3 part buffers in use, all handlers together.",
		})
		metrics.bufWaits = prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "store_buffer_waits_total",
			Help: "Times an S3 upload found no free part buffer and stopped reading from its client until one was.",
		})
	})
	for _, c := range []prometheus.Collector{
		metrics.uploads, metrics.parts, metrics.received, metrics.sent, metrics.rejections,
		metrics.inFlight, metrics.partSeconds, metrics.backendTTFB, metrics.bufInUse, metrics.bufWaits,
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
