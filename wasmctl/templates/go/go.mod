// Change example.com/{{name}} to where the code lives (e.g. github.com/ORG/REPO).
module example.com/{{name}}

go 1.24

require github.com/proxy-wasm/proxy-wasm-go-sdk v0.0.0-20250212164326-ab4161dcf924
