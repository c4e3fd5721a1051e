// Command go-filter is a proxy-wasm HTTP filter written in Go with the proxy-wasm Go SDK and
// built by the standard Go toolchain as a WASI reactor:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o go_filter.wasm .
//
// It adds response headers from its configuration, copies request headers (pseudo-headers
// such as :path included) into other request headers, numbers the requests its VM served in
// x-go-requests, and counts requests and the Go runtime's garbage collections in two counters.
// README.md describes the configuration and what running Go's runtime inside the VM means.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"runtime/metrics"
	"sort"
	"strconv"
	"strings"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
)

// The names this filter adds to requests, responses and Envoy's stats.
const (
	// plainHeader is the response header a plain-text configuration sets.
	plainHeader = "x-go-filter"
	// requestsHeader carries the number of the request within the VM that served it.
	requestsHeader = "x-go-requests"
	// requestsMetric counts every request the filter saw (Envoy: wasmcustom.go_filter.requests).
	requestsMetric = "go_filter.requests"
	// gcMetric counts the Go runtime's completed GC cycles (wasmcustom.go_filter.gc_cycles).
	gcMetric = "go_filter.gc_cycles"
	// logPrefix starts every line the filter logs.
	logPrefix = "go-filter: "
)

// main is not called: a -buildmode=c-shared module is a reactor, whose _initialize runs the
// package initializers and returns; the host then calls the proxy_on_* exports.
func main() {}

func init() {
	proxywasm.SetVMContext(&vmContext{})
}

// gcSeen is how many of the runtime's GC cycles the gc_cycles counter already holds. There is
// one Go runtime per VM, so this is per VM too, however many plugins share it.
var gcSeen uint64

type vmContext struct {
	types.DefaultVMContext
}

func (*vmContext) NewPluginContext(uint32) types.PluginContext {
	return &pluginContext{}
}

// pluginContext holds one plugin configuration and the requests it served in this VM.
type pluginContext struct {
	types.DefaultPluginContext
	cfg      *filterConfig
	requests proxywasm.MetricCounter
	gcCycles proxywasm.MetricCounter
	served   uint64
	samples  []metrics.Sample
}

func (p *pluginContext) OnPluginStart(size int) types.OnPluginStartStatus {
	var data []byte
	if size > 0 {
		var err error
		if data, err = proxywasm.GetPluginConfiguration(); err != nil {
			proxywasm.LogErrorf(logPrefix+"cannot read the configuration: %v", err)
			return types.OnPluginStartStatusFailed
		}
	}
	cfg, err := parseConfig(data)
	if err != nil {
		proxywasm.LogErrorf(logPrefix+"invalid configuration: %v", err)
		return types.OnPluginStartStatusFailed
	}
	p.cfg = cfg
	p.requests = proxywasm.DefineCounterMetric(requestsMetric)
	p.gcCycles = proxywasm.DefineCounterMetric(gcMetric)
	p.samples = []metrics.Sample{
		{Name: "/gc/cycles/total:gc-cycles"},
		{Name: "/gc/heap/live:bytes"},
	}
	proxywasm.LogInfof(logPrefix+"configured %d response header(s), %d copy rule(s) on %s",
		len(cfg.response), len(cfg.copies), runtime.Version())
	return types.OnPluginStartStatusOK
}

func (p *pluginContext) NewHttpContext(uint32) types.HttpContext {
	return &httpContext{plugin: p}
}

// httpContext is one request and its response.
type httpContext struct {
	types.DefaultHttpContext
	plugin *pluginContext
	number uint64
	path   string
}

func (h *httpContext) OnHttpRequestHeaders(int, bool) types.Action {
	p := h.plugin
	p.served++
	h.number = p.served
	p.requests.Increment(1)

	headers, err := proxywasm.GetHttpRequestHeaders()
	if err != nil {
		proxywasm.LogWarnf(logPrefix+"cannot read the request headers: %v", err)
		return types.ActionContinue
	}
	// The request's headers by lower-case name: a map, slices and strings made for this request
	// only, garbage once it ends, so a steady stream of requests keeps the collector working.
	byName := make(map[string][]string, len(headers))
	for _, kv := range headers {
		name := strings.ToLower(kv[0])
		byName[name] = append(byName[name], kv[1])
	}
	h.path = strings.Join(byName[":path"], ",")
	for _, c := range p.cfg.copies {
		values, ok := byName[c.from]
		if !ok {
			continue
		}
		if err := proxywasm.ReplaceHttpRequestHeader(c.to, strings.Join(values, ",")); err != nil {
			proxywasm.LogWarnf(logPrefix+"cannot set %s: %v", c.to, err)
		}
	}
	return types.ActionContinue
}

func (h *httpContext) OnHttpResponseHeaders(int, bool) types.Action {
	for _, kv := range h.plugin.cfg.response {
		if err := proxywasm.AddHttpResponseHeader(kv.name, kv.value); err != nil {
			proxywasm.LogWarnf(logPrefix+"cannot add %s: %v", kv.name, err)
		}
	}
	if err := proxywasm.AddHttpResponseHeader(requestsHeader, strconv.FormatUint(h.number, 10)); err != nil {
		proxywasm.LogWarnf(logPrefix+"cannot add %s: %v", requestsHeader, err)
	}
	return types.ActionContinue
}

// OnHttpStreamDone (proxy_on_log) adds the GC cycles completed since the last stream to the
// gc_cycles counter and logs the request at debug with the live heap.
func (h *httpContext) OnHttpStreamDone() {
	p := h.plugin
	metrics.Read(p.samples)
	cycles, live := sampleUint(p.samples[0]), sampleUint(p.samples[1])
	if cycles > gcSeen {
		// Envoy refuses a counter increment of 0, so only a real change is sent.
		p.gcCycles.Increment(cycles - gcSeen)
		gcSeen = cycles
	}
	proxywasm.LogDebugf(logPrefix+"request %d (%s) done; live heap %d bytes after %d GC cycle(s)",
		h.number, h.path, live, cycles)
}

func sampleUint(s metrics.Sample) uint64 {
	if s.Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s.Value.Uint64()
}

// filterConfig is a checked configuration: the response headers in name order and the copy
// rules in the order given.
type filterConfig struct {
	response []header
	copies   []copyRule
}

type header struct{ name, value string }

type copyRule struct{ from, to string }

// jsonConfig is the JSON form of the configuration.
type jsonConfig struct {
	// ResponseHeaders are added to every response (name -> value).
	ResponseHeaders map[string]string `json:"response_headers"`
	// Copy sets request header To to the value of request header From (joined with "," when it
	// has several); nothing happens when From is absent.
	Copy []struct {
		From string `json:"from"`
		To   string `json:"to"`
	} `json:"copy"`
}

// parseConfig reads either a JSON object (jsonConfig) or, for anything not starting with "{",
// plain text that becomes the value of the x-go-filter response header.
func parseConfig(data []byte) (*filterConfig, error) {
	text := bytes.TrimSpace(data)
	if len(text) == 0 {
		return nil, errors.New("empty: give a header value or a JSON object")
	}
	if text[0] != '{' {
		if err := checkValue(string(text)); err != nil {
			return nil, fmt.Errorf("value: %w", err)
		}
		return &filterConfig{response: []header{{plainHeader, string(text)}}}, nil
	}
	var j jsonConfig
	dec := json.NewDecoder(bytes.NewReader(text))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("text after the JSON object")
	}
	cfg := &filterConfig{}
	for name, value := range j.ResponseHeaders {
		name = strings.ToLower(name)
		if err := checkName(name, false); err != nil {
			return nil, fmt.Errorf("response_headers: %w", err)
		}
		if err := checkValue(value); err != nil {
			return nil, fmt.Errorf("response_headers[%q]: %w", name, err)
		}
		cfg.response = append(cfg.response, header{name, value})
	}
	// Go randomises map order: sort, so every VM adds the headers in the same order.
	sort.Slice(cfg.response, func(a, b int) bool { return cfg.response[a].name < cfg.response[b].name })
	for i, c := range j.Copy {
		from, to := strings.ToLower(c.From), strings.ToLower(c.To)
		if err := checkName(from, true); err != nil {
			return nil, fmt.Errorf("copy[%d].from: %w", i, err)
		}
		if err := checkName(to, false); err != nil {
			return nil, fmt.Errorf("copy[%d].to: %w", i, err)
		}
		cfg.copies = append(cfg.copies, copyRule{from, to})
	}
	if len(cfg.response) == 0 && len(cfg.copies) == 0 {
		return nil, errors.New("nothing to do: no response_headers and no copy rules")
	}
	return cfg, nil
}

// checkName accepts an HTTP field name (an RFC 9110 token) and, when pseudo is true, a
// pseudo-header such as :path.
func checkName(name string, pseudo bool) error {
	token := name
	if pseudo {
		token = strings.TrimPrefix(name, ":")
	}
	if token == "" {
		return fmt.Errorf("header name %q is empty", name)
	}
	for _, r := range token {
		if r > 0x7e || !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || strings.ContainsRune("!#$%&'*+-.^_`|~", r)) {
			return fmt.Errorf("header name %q: character %q is not allowed", name, r)
		}
	}
	return nil
}

// checkValue refuses the control characters a header value may not hold.
func checkValue(value string) error {
	for i, r := range value {
		if r < 0x20 && r != '\t' || r == 0x7f {
			return fmt.Errorf("control character %q at byte %d", r, i)
		}
	}
	return nil
}
