;; A core wasm tool with the JSON-in/JSON-out ABI (see sandbox/guest_core.py): the host writes the
;; input JSON into memory from `alloc`, calls `run(ptr, len)`, and reads the result JSON at the
;; (ptr << 32 | len) it returns. This one hands its input back unchanged.
(module
  (memory (export "memory") 1)
  (global $next (mut i32) (i32.const 1024))
  (func (export "alloc") (param $len i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $len)))
    (local.get $p))
  (func (export "run") (param $ptr i32) (param $len i32) (result i64)
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
      (i64.extend_i32_u (local.get $len)))))
