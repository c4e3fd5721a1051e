module envoy-wasm-toolkit/examples/go-tcp-filter

go 1.24

require github.com/proxy-wasm/proxy-wasm-go-sdk v0.0.0-20250212164326-ab4161dcf924
