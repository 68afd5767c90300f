package e2e

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// OTLPReceiver is an OTLP/HTTP traces endpoint for tests: it decodes every
// export request with the protocol's official protobuf types
// (go.opentelemetry.io/proto/otlp) and keeps the spans. It is the receiving
// half of an OpenTelemetry Collector's OTLP receiver, without the
// Collector, whose modules would more than double this module's
// dependencies.
type OTLPReceiver struct {
	srv *httptest.Server

	mu     sync.Mutex
	spans  []*tracepb.Span
	errors []string
}

// StartOTLPReceiver serves on a loopback port until the test ends.
func StartOTLPReceiver(t testing.TB) *OTLPReceiver {
	t.Helper()
	r := NewOTLPReceiver()
	t.Cleanup(r.Close)
	return r
}

// NewOTLPReceiver is StartOTLPReceiver for programs such as the demo; the
// caller must Close it.
func NewOTLPReceiver() *OTLPReceiver {
	r := &OTLPReceiver{}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	return r
}

// Close stops serving.
func (r *OTLPReceiver) Close() { r.srv.Close() }

// URL is the traces endpoint, for --otlp-traces-endpoint.
func (r *OTLPReceiver) URL() string { return r.srv.URL + "/v1/traces" }

// Spans returns the spans received so far, in the order received.
func (r *OTLPReceiver) Spans() []*tracepb.Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*tracepb.Span(nil), r.spans...)
}

// Errors returns what was wrong with requests received, if anything.
func (r *OTLPReceiver) Errors() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.errors...)
}

func (r *OTLPReceiver) fail(w http.ResponseWriter, status int, msg string) {
	r.mu.Lock()
	r.errors = append(r.errors, msg)
	r.mu.Unlock()
	http.Error(w, msg, status)
}

// serve implements OTLP/HTTP with binary protobuf (the specification's
// default encoding), plain or gzip-compressed.
func (r *OTLPReceiver) serve(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost || req.URL.Path != "/v1/traces" {
		r.fail(w, http.StatusNotFound, req.Method+" "+req.URL.Path)
		return
	}
	if ct := req.Header.Get("Content-Type"); ct != "application/x-protobuf" {
		r.fail(w, http.StatusUnsupportedMediaType, "content type "+ct)
		return
	}
	var body io.Reader = req.Body
	if req.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(req.Body)
		if err != nil {
			r.fail(w, http.StatusBadRequest, err.Error())
			return
		}
		body = zr
	}
	data, err := io.ReadAll(body)
	if err != nil {
		r.fail(w, http.StatusBadRequest, err.Error())
		return
	}
	var export coltracepb.ExportTraceServiceRequest
	if err := proto.Unmarshal(data, &export); err != nil {
		r.fail(w, http.StatusBadRequest, "decode: "+err.Error())
		return
	}
	r.mu.Lock()
	for _, rs := range export.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			r.spans = append(r.spans, ss.GetSpans()...)
		}
	}
	r.mu.Unlock()
	out, err := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	if err != nil {
		r.fail(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = io.Copy(w, bytes.NewReader(out)) // the exporter may have gone
}
