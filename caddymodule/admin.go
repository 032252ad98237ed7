package streamproxy

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/streamproxy/caddy-stream-proxy/formreader"
)

func init() {
	caddy.RegisterModule(Admin{})
}

// inFlight holds every upload being handled, for the admin API: a map under a
// mutex, as a sync.Map holds some 200 bytes of nodes an entry for as long as
// the upload lasts, and a map some 20.
var inFlight = struct {
	sync.Mutex
	m map[*upload]struct{}
}{m: make(map[*upload]struct{})}

func track(u *upload) {
	inFlight.Lock()
	inFlight.m[u] = struct{}{}
	inFlight.Unlock()
}

func untrack(u *upload) {
	inFlight.Lock()
	delete(inFlight.m, u)
	inFlight.Unlock()
}

// Admin serves the uploads in flight on Caddy's admin endpoint:
//
//	GET /stream_proxy/uploads
//
// answers a JSON array with one object per upload being handled: its id,
// remote address, method, host and URI, mode, start time, bytes received so
// far, parts seen, the part being read (index, field, filename) and the mean
// rate in whole bytes per second. An upload leaves the list when it ends.
type Admin struct{}

// CaddyModule returns the Caddy module information.
func (Admin) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.stream_proxy",
		New: func() caddy.Module { return new(Admin) },
	}
}

// Routes returns the admin routes.
func (a *Admin) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{
		Pattern: "/stream_proxy/uploads",
		Handler: caddy.AdminHandlerFunc(a.handleUploads),
	}}
}

// uploadStatus is one upload in flight, as the admin API shows it.
type uploadStatus struct {
	ID          string              `json:"id"`
	RemoteAddr  string              `json:"remote_addr"`
	Method      string              `json:"method"`
	Host        string              `json:"host"`
	URI         string              `json:"uri"`
	Mode        string              `json:"mode"`
	Started     time.Time           `json:"started"`
	Bytes       int64               `json:"bytes"`
	Parts       int64               `json:"parts"`
	CurrentPart *formreader.PartRef `json:"current_part,omitempty"`
	Rate        int64               `json:"bytes_per_second"`
}

func (a *Admin) handleUploads(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method not allowed")}
	}
	inFlight.Lock()
	uploads := slices.Collect(maps.Keys(inFlight.m))
	inFlight.Unlock()
	list := make([]uploadStatus, 0, len(uploads))
	now := time.Now()
	for _, u := range uploads {
		list = append(list, u.snapshot(now))
	}
	slices.SortFunc(list, func(a, b uploadStatus) int { return a.Started.Compare(b.Started) })
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(list)
}

// Interface guard
var _ caddy.AdminRouter = (*Admin)(nil)
