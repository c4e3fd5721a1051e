;; The floor: the least a proxy-wasm module can be while doing the seed configuration's job in
;; Envoy (adding `hello: hello details` to every response). It exports only what Envoy needs:
;;
;; - `memory`, and an allocator (`proxy_on_memory_allocate`): Envoy refuses a module without one,
;;   though this module never asks the host for data, so it is never called;
;; - `proxy_abi_version_0_2_1`: which ABI it speaks;
;; - `proxy_on_context_create`: Envoy calls it for the root context and for every stream;
;; - `proxy_on_response_headers`: one host call per response, `proxy_add_header_map_value`.
;;
;; Everything else (`proxy_on_vm_start`, `proxy_on_configure`, `proxy_on_request_headers`,
;; `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`, ...) is absent, and Envoy skips a callback a
;; module does not export. One page of memory holds the two strings. What a real filter costs
;; above this module is the part its code controls; this module's cost is what V8 and the ABI
;; impose (`make bench-envoy`, configuration "floor").
(module
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello")
  (data (i32.const 32) "hello details")
  (func (export "proxy_abi_version_0_2_1"))
  ;; Never called: the module asks the host for nothing.
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 0))
  (func (export "proxy_on_context_create") (param i32 i32))
  ;; (context id, header count, end of stream) -> Continue; map type 2 is the response headers.
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add_header (i32.const 2) (i32.const 16) (i32.const 5) (i32.const 32) (i32.const 13)))
    (i32.const 0)))
