// Command go-grpc-filter is a proxy-wasm HTTP filter written in Go with the proxy-wasm Go SDK
// that authorizes each request with a gRPC call (or a gRPC stream), the Go counterpart of
// examples/grpc-filter, built by the standard Go toolchain as a WASI reactor:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o go_grpc_filter.wasm .
//
// The SDK has no gRPC calls: grpc.go binds the ABI's own. Plugin configuration:
// `MODE[,CLUSTER[,TIMEOUT_MS]]`, default `unary,grpc_auth,1000` (README.md).
//
//   - unary: on request headers, calls auth.Authorizer/Check on CLUSTER with metadata
//     `x-request-path: <:path>` and the :path as the message, and pauses. An OK answer whose
//     message is `allow` resumes the request with request header `x-grpc-answer: allow`; any
//     other message, or a status other than OK, answers 403 (`x-denied-by: grpc`) with the
//     reason in the body. A call that cannot be made answers 503.
//   - stream: opens auth.Authorizer/Watch with the same metadata, sends `one:<:path>` and `two`
//     (ending its side), logs each callback and on the close resumes with
//     `x-grpc-messages: <n>` (status OK) or answers 403.
package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
)

// service is the gRPC service the filter calls.
const service = "auth.Authorizer"

// main is not called: a -buildmode=c-shared module is a reactor; its _initialize runs init.
func main() {}

func init() {
	proxywasm.SetVMContext(&vmContext{})
}

type vmContext struct {
	types.DefaultVMContext
}

func (*vmContext) NewPluginContext(uint32) types.PluginContext {
	return &pluginContext{}
}

// config is a checked configuration.
type config struct {
	stream    bool
	cluster   string
	timeoutMs uint32
}

// parseConfig reads `MODE[,CLUSTER[,TIMEOUT_MS]]`; missing or empty parts take the defaults.
func parseConfig(text string) (config, error) {
	c := config{cluster: "grpc_auth", timeoutMs: 1000}
	parts := strings.Split(strings.TrimSpace(text), ",")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	switch parts[0] {
	case "", "unary":
	case "stream":
		c.stream = true
	default:
		return c, fmt.Errorf("unknown mode %q (unary or stream)", parts[0])
	}
	if len(parts) > 1 && parts[1] != "" {
		c.cluster = parts[1]
	}
	if len(parts) > 2 {
		ms, err := strconv.ParseUint(parts[2], 10, 31)
		if err != nil {
			return c, fmt.Errorf("timeout %q is not a number of milliseconds", parts[2])
		}
		c.timeoutMs = uint32(ms)
	}
	if len(parts) > 3 {
		return c, errors.New("more than MODE,CLUSTER,TIMEOUT_MS")
	}
	return c, nil
}

type pluginContext struct {
	types.DefaultPluginContext
	cfg config
}

func (p *pluginContext) OnPluginStart(size int) types.OnPluginStartStatus {
	var text string
	if size > 0 {
		data, err := proxywasm.GetPluginConfiguration()
		if err != nil {
			proxywasm.LogErrorf("go-grpc-filter: cannot read the configuration: %v", err)
			return types.OnPluginStartStatusFailed
		}
		text = string(data)
	}
	cfg, err := parseConfig(text)
	if err != nil {
		proxywasm.LogErrorf("go-grpc-filter: %v", err)
		return types.OnPluginStartStatusFailed
	}
	p.cfg = cfg
	mode := "unary"
	if cfg.stream {
		mode = "stream"
	}
	proxywasm.LogInfof("go-grpc-filter: %s calls to %s", mode, cfg.cluster)
	return types.OnPluginStartStatusOK
}

func (p *pluginContext) NewHttpContext(id uint32) types.HttpContext {
	return &request{id: id, cfg: p.cfg}
}

// request is one HTTP request waiting for, or done with, its gRPC answer.
type request struct {
	types.DefaultHttpContext
	id       uint32
	cfg      config
	token    uint32
	pending  bool
	messages int
}

func (r *request) contextID() uint32 { return r.id }

func (r *request) OnHttpRequestHeaders(int, bool) types.Action {
	path, _ := proxywasm.GetHttpRequestHeader(":path")
	metadata := [][2]string{{"x-request-path", path}}
	if r.cfg.stream {
		token, err := grpcStream(r.cfg.cluster, service, "Watch", metadata)
		if err != nil {
			r.failed("stream", err)
			return types.ActionPause
		}
		r.register(token, false)
		if err := grpcSend(token, []byte("one:"+path), false); err != nil {
			proxywasm.LogWarnf("go-grpc-filter: send failed: %v", err)
		}
		if err := grpcSend(token, []byte("two"), true); err != nil {
			proxywasm.LogWarnf("go-grpc-filter: send failed: %v", err)
		}
		proxywasm.LogInfof("grpc stream opened to %s", r.cfg.cluster)
		return types.ActionPause
	}
	token, err := grpcCall(r.cfg.cluster, service, "Check", metadata, []byte(path), r.cfg.timeoutMs)
	if err != nil {
		r.failed("call", err)
		return types.ActionPause
	}
	r.register(token, true)
	proxywasm.LogInfof("grpc call made to %s", r.cfg.cluster)
	return types.ActionPause
}

func (r *request) register(token uint32, unary bool) {
	r.token, r.pending = token, true
	calls[token] = r
	if unary {
		unaryCalls[token] = true
	}
}

// OnHttpStreamDone forgets a call the request no longer waits for (the client went away).
func (r *request) OnHttpStreamDone() {
	if r.pending {
		delete(calls, r.token)
		delete(unaryCalls, r.token)
	}
}

func (r *request) failed(what string, err error) {
	proxywasm.LogWarnf("grpc %s to %s failed: %v", what, r.cfg.cluster, err)
	r.respond(503, nil, "grpc call failed\n")
}

func (r *request) deny(reason string) {
	r.respond(403, [][2]string{{"x-denied-by", "grpc"}}, "denied: "+reason+"\n")
}

func (r *request) respond(status uint32, headers [][2]string, body string) {
	if err := proxywasm.SendHttpResponse(status, headers, []byte(body), -1); err != nil {
		proxywasm.LogWarnf("go-grpc-filter: cannot answer %d: %v", status, err)
	}
}

func (r *request) resume(header, value string) {
	if err := proxywasm.AddHttpRequestHeader(header, value); err != nil {
		proxywasm.LogWarnf("go-grpc-filter: cannot add %s: %v", header, err)
	}
	if err := proxywasm.ResumeHttpRequest(); err != nil {
		proxywasm.LogWarnf("go-grpc-filter: cannot resume: %v", err)
	}
}

func (r *request) onUnaryAnswer(status uint32, message []byte) {
	r.pending = false
	_, statusMessage := grpcStatus()
	proxywasm.LogInfof("grpc answer: status %d, message %q, body %q", status, statusMessage, message)
	switch {
	case status != grpcStatusOK:
		r.deny(fmt.Sprintf("status %d %s", status, statusMessage))
	case string(message) == "allow":
		r.resume("x-grpc-answer", "allow")
	default:
		r.deny(string(message))
	}
}

// shownMetadata is every entry as name=value, but the value of x-envoy-upstream-service-time
// (a duration, different on every run) as *.
func shownMetadata(pairs [][2]string) string {
	shown := make([]string, len(pairs))
	for i, kv := range pairs {
		if kv[0] == "x-envoy-upstream-service-time" {
			shown[i] = kv[0] + "=*"
		} else {
			shown[i] = kv[0] + "=" + kv[1]
		}
	}
	return strings.Join(shown, ",")
}

func (r *request) onStreamInitialMetadata(entries int) {
	proxywasm.LogInfof("grpc stream initial metadata (%d entries): %s", entries,
		shownMetadata(grpcMetadata(mapInitialMetadata)))
}

func (r *request) onStreamMessage(message []byte) {
	r.messages++
	proxywasm.LogInfof("grpc stream message %d: %q", r.messages, message)
}

func (r *request) onStreamTrailingMetadata(entries int) {
	proxywasm.LogInfof("grpc stream trailing metadata (%d entries): %s", entries,
		shownMetadata(grpcMetadata(mapTrailingMetadata)))
}

func (r *request) onStreamClose(status uint32) {
	r.pending = false
	_, statusMessage := grpcStatus()
	proxywasm.LogInfof("grpc stream closed: status %d, message %q", status, statusMessage)
	if status == grpcStatusOK {
		r.resume("x-grpc-messages", strconv.Itoa(r.messages))
		return
	}
	r.deny(fmt.Sprintf("status %d %s", status, statusMessage))
}
