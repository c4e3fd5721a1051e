// Command go-tcp-filter is a proxy-wasm network (TCP) filter written in Go with the proxy-wasm
// Go SDK, the Go counterpart of examples/tcp-filter, built by the standard Go toolchain as a
// WASI reactor:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o go_tcp_filter.wasm .
//
// Each connection counts the bytes it carries each way, and when it closes the filter logs one
// line: `go-tcp-filter PREFIX: downstream N bytes, upstream M bytes`. The configuration is the
// Rust filter's (README.md): prefix, uppercase, log_events, cluster.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
)

// tcpProxyCluster is the filter state object that picks tcp_proxy's cluster.
const tcpProxyCluster = "envoy.tcp_proxy.cluster"

// main is not called: a -buildmode=c-shared module is a reactor; its _initialize runs init.
func main() {}

func init() {
	proxywasm.SetVMContext(&vmContext{})
}

type vmContext struct {
	types.DefaultVMContext
}

func (*vmContext) NewPluginContext(uint32) types.PluginContext {
	return &pluginContext{cfg: defaultConfig()}
}

// config is a checked configuration.
type config struct {
	prefix string
	// upDownstream and upUpstream: upper-case the client's bytes, the upstream's bytes.
	upDownstream, upUpstream bool
	logEvents                bool
	// cluster is the tcp_proxy cluster each connection goes to ("": tcp_proxy's own).
	cluster string
}

func defaultConfig() *config {
	return &config{prefix: "tcp"}
}

// jsonConfig is the JSON form: every field optional; pointers tell a missing field.
type jsonConfig struct {
	Prefix    *string `json:"prefix"`
	Uppercase *string `json:"uppercase"`
	LogEvents *bool   `json:"log_events"`
	Cluster   *string `json:"cluster"`
}

// parseConfig reads the plugin configuration; empty means every default.
func parseConfig(data []byte) (*config, error) {
	c := defaultConfig()
	text := bytes.TrimSpace(data)
	if len(text) == 0 {
		return c, nil
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
	if j.Prefix != nil {
		c.prefix = *j.Prefix
	}
	if j.Uppercase != nil {
		switch *j.Uppercase {
		case "downstream":
			c.upDownstream = true
		case "upstream":
			c.upUpstream = true
		case "both":
			c.upDownstream, c.upUpstream = true, true
		default:
			return nil, errors.New(`uppercase: expected "downstream", "upstream" or "both"`)
		}
	}
	if j.LogEvents != nil {
		c.logEvents = *j.LogEvents
	}
	if j.Cluster != nil {
		if *j.Cluster == "" {
			return nil, errors.New("cluster: expected a cluster name")
		}
		c.cluster = *j.Cluster
	}
	return c, nil
}

// pluginContext holds one plugin configuration.
type pluginContext struct {
	types.DefaultPluginContext
	cfg *config
}

func (p *pluginContext) OnPluginStart(size int) types.OnPluginStartStatus {
	var data []byte
	if size > 0 {
		var err error
		if data, err = proxywasm.GetPluginConfiguration(); err != nil {
			proxywasm.LogWarnf("go-tcp-filter: cannot read the configuration: %v", err)
			return types.OnPluginStartStatusFailed
		}
	}
	cfg, err := parseConfig(data)
	if err != nil {
		proxywasm.LogWarnf("go-tcp-filter: invalid configuration: %v", err)
		return types.OnPluginStartStatusFailed
	}
	p.cfg = cfg
	return types.OnPluginStartStatusOK
}

func (p *pluginContext) NewTcpContext(uint32) types.TcpContext {
	return &connection{cfg: p.cfg}
}

// connection is one TCP connection through the filter.
type connection struct {
	types.DefaultTcpContext
	cfg                  *config
	downstream, upstream int
}

func (c *connection) logf(format string, args ...any) {
	proxywasm.LogInfof("go-tcp-filter "+c.cfg.prefix+": "+format, args...)
}

// event logs a callback when log_events is on.
func (c *connection) event(format string, args ...any) {
	if c.cfg.logEvents {
		c.logf(format, args...)
	}
}

func sizeText(size int, endOfStream bool) string {
	if endOfStream {
		return fmt.Sprintf("%d bytes, end of stream", size)
	}
	return fmt.Sprintf("%d bytes", size)
}

func peerText(p types.PeerType) string {
	switch p {
	case types.PeerTypeLocal:
		return "Local"
	case types.PeerTypeRemote:
		return "Remote"
	default:
		return "Unknown"
	}
}

func (c *connection) OnNewConnection() types.Action {
	c.event("new connection")
	if c.cfg.cluster != "" {
		c.route(c.cfg.cluster)
	}
	return types.ActionContinue
}

// route points tcp_proxy at cluster with Envoy's foreign function set_envoy_filter_state, reads
// the filter state back and logs what happened.
func (c *connection) route(cluster string) {
	args := filterStateArguments(tcpProxyCluster, cluster)
	if _, err := proxywasm.CallForeignFunction("set_envoy_filter_state", args); err != nil {
		proxywasm.LogWarnf("go-tcp-filter %s: set_envoy_filter_state failed: %v", c.cfg.prefix, err)
		return
	}
	read := "not readable"
	if v, err := proxywasm.GetProperty([]string{"filter_state", tcpProxyCluster}); err == nil {
		read = string(v)
	}
	c.logf("routed to %s (filter state %s)", cluster, read)
}

// filterStateArguments encodes the protobuf message SetEnvoyFilterStateArguments: path (field
// 1) and value (field 2), each a length-delimited string; span (field 3) left at its default.
func filterStateArguments(path, value string) []byte {
	var b []byte
	for _, f := range []struct {
		tag byte
		s   string
	}{{0x0a, path}, {0x12, value}} {
		if f.s == "" {
			continue
		}
		b = append(b, f.tag)
		for n := uint(len(f.s)); ; n >>= 7 {
			if n < 0x80 {
				b = append(b, byte(n))
				break
			}
			b = append(b, byte(n)|0x80)
		}
		b = append(b, f.s...)
	}
	return b
}

func (c *connection) OnDownstreamData(size int, endOfStream bool) types.Action {
	c.event("downstream data %s", sizeText(size, endOfStream))
	c.downstream += size
	if c.cfg.upDownstream && size > 0 {
		if data, err := proxywasm.GetDownstreamData(0, size); err == nil {
			if err := proxywasm.ReplaceDownstreamData(asciiUpper(data)); err != nil {
				proxywasm.LogWarnf("go-tcp-filter %s: cannot rewrite: %v", c.cfg.prefix, err)
			}
		}
	}
	return types.ActionContinue
}

func (c *connection) OnUpstreamData(size int, endOfStream bool) types.Action {
	c.event("upstream data %s", sizeText(size, endOfStream))
	c.upstream += size
	if c.cfg.upUpstream && size > 0 {
		if data, err := proxywasm.GetUpstreamData(0, size); err == nil {
			if err := proxywasm.ReplaceUpstreamData(asciiUpper(data)); err != nil {
				proxywasm.LogWarnf("go-tcp-filter %s: cannot rewrite: %v", c.cfg.prefix, err)
			}
		}
	}
	return types.ActionContinue
}

// asciiUpper upper-cases ASCII letters and leaves every other byte as it is (bytes.ToUpper
// would rewrite bytes that are not UTF-8).
func asciiUpper(data []byte) []byte {
	out := make([]byte, len(data))
	for i, b := range data {
		if 'a' <= b && b <= 'z' {
			b -= 'a' - 'A'
		}
		out[i] = b
	}
	return out
}

func (c *connection) OnDownstreamClose(p types.PeerType) {
	c.event("downstream close (peer %s)", peerText(p))
}

func (c *connection) OnUpstreamClose(p types.PeerType) {
	c.event("upstream close (peer %s)", peerText(p))
}

// OnStreamDone (proxy_on_log) logs the counts. The SDK gives a stream context no proxy_on_done
// hook, so unlike the Rust filter this one logs no "done" event.
func (c *connection) OnStreamDone() {
	c.logf("downstream %d bytes, upstream %d bytes", c.downstream, c.upstream)
}
