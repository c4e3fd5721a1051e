// Command {{name}} is a proxy-wasm HTTP filter (proxy-wasm Go SDK) that adds one header to every
// response. Build it as a WASI reactor with Go 1.24 or newer:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o build/{{name}}.wasm .
//
// Plugin configuration (JSON): {"name": "x-added-by", "value": "{{name}}"}. A configuration that
// is not JSON, or has no "name", makes the plugin fail to start with a log line saying why:
// Envoy then refuses the plugin, and `wasmctl dev` shows the line.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
)

// main is not called: a -buildmode=c-shared module is a reactor; the host calls its exports.
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

// header is the header every response gets.
type header struct{ name, value string }

// pluginContext holds one plugin configuration.
type pluginContext struct {
	types.DefaultPluginContext
	header header
}

const expected = `expected {"name": "...", "value": "..."}`

// parseConfig reads {"name": "...", "value": "..."}; the error says what is wrong.
func parseConfig(data []byte) (header, error) {
	var c struct {
		Name  *string `json:"name"`
		Value *string `json:"value"`
	}
	if err := json.Unmarshal(data, &c); err != nil {
		return header{}, fmt.Errorf("not JSON or not an object of strings (%v); %s", err, expected)
	}
	if c.Name == nil {
		return header{}, fmt.Errorf(`"name" is missing; %s`, expected)
	}
	if *c.Name == "" {
		return header{}, errors.New(`"name" is empty`)
	}
	if c.Value == nil {
		return header{}, fmt.Errorf(`"value" is missing; %s`, expected)
	}
	return header{strings.ToLower(*c.Name), *c.Value}, nil
}

func (p *pluginContext) OnPluginStart(int) types.OnPluginStartStatus {
	data, err := proxywasm.GetPluginConfiguration()
	if err != nil && !errors.Is(err, types.ErrorStatusNotFound) {
		proxywasm.LogErrorf("invalid configuration: cannot read it: %v", err)
		return types.OnPluginStartStatusFailed
	}
	h, err := parseConfig(data)
	if err != nil {
		proxywasm.LogErrorf("invalid configuration: %v", err)
		return types.OnPluginStartStatusFailed
	}
	p.header = h
	proxywasm.LogInfof("configured: adds %s: %s", h.name, h.value)
	return types.OnPluginStartStatusOK
}

func (p *pluginContext) NewHttpContext(uint32) types.HttpContext {
	return &httpContext{header: p.header}
}

// httpContext is one request and its response.
type httpContext struct {
	types.DefaultHttpContext
	header header
}

func (h *httpContext) OnHttpResponseHeaders(int, bool) types.Action {
	if err := proxywasm.AddHttpResponseHeader(h.header.name, h.header.value); err != nil {
		proxywasm.LogWarnf("cannot add %s: %v", h.header.name, err)
	}
	return types.ActionContinue
}
