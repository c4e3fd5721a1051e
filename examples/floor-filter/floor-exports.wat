;; The floor module with the header filter's exports: the same one host call per response, and
;; every callback the header filter exports (`proxy_on_vm_start`, `proxy_on_configure`,
;; `proxy_on_tick`, `proxy_on_request_headers`, `proxy_on_delete`) doing nothing. Envoy calls an
;; exported callback whether or not the module has work in it, so a filter that supports request
;; rules and per-stream state pays for these calls on every request, whatever its configuration:
;; the difference between this module and `floor.wat` is what the ABI imposes on such a filter,
;; and the header filter's cost above this module is what its own code adds (`make bench-envoy`,
;; configuration "floor_exports").
(module
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello")
  (data (i32.const 32) "hello details")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 0))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_tick") (param i32))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add_header (i32.const 2) (i32.const 16) (i32.const 5) (i32.const 32) (i32.const 13)))
    (i32.const 0))
  (func (export "proxy_on_delete") (param i32)))
