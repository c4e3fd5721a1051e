//! Foreign function interface (the spec's "Foreign function interface"):
//! `proxy_call_foreign_function` calls a function by name: one the test registered on the host,
//! else one of Envoy 1.40's (`crate::foreign`), else `NotFound`.

use super::helpers::{HostResult, OK, alloc_copy, gave, give, read, read_str, tri, write_u32};
use crate::abi::Status;
use crate::foreign::{self as envoy, DeclareProperty, SetEnvoyFilterState};
use crate::host::{FilterStateSet, ForeignCall};
use crate::vm::VmState;
use wasmtime::Caller;

/// `proxy_call_foreign_function(name_data, name_size, args_data, args_size, return_data,
/// return_size)`: the function's result; `NotFound` for an unknown name.
///
/// As cpp-host: a function that ran has the result's address and size written to the
/// out-parameters whatever its status (0 and 0 when it returned nothing), the address only when
/// `return_data` is not 0 (else the result is dropped, never allocated in the module), the size
/// only when `return_size` is not 0.
pub(super) fn proxy_call_foreign_function(
    mut c: Caller<'_, VmState>,
    np: i32,
    ns: i32,
    ap: i32,
    asz: i32,
    pp: i32,
    sp: i32,
) -> HostResult {
    let name = tri!(read_str(&mut c, np, ns));
    let args = tri!(read(&mut c, ap, asz));
    let registered = c.data().shared.borrow().foreign.get(&name).cloned();
    if let Some(f) = registered {
        let out = f(&args);
        record(
            c.data(),
            &name,
            out.as_ref().err().copied().unwrap_or(Status::Ok),
        );
        let out = tri!(out);
        if pp == 0 {
            return Ok(OK);
        }
        return gave(give(&mut c, &out, pp, sp));
    }
    let (status, out) = match name.as_str() {
        envoy::SET_ENVOY_FILTER_STATE => (set_envoy_filter_state(c.data_mut(), &args), None),
        envoy::CLEAR_ROUTE_CACHE => (clear_route_cache(c.data_mut()), None),
        envoy::DECLARE_PROPERTY => (declare_property(c.data_mut(), &args), None),
        envoy::COMPRESS => (Status::Ok, Some(envoy::compress(&args))),
        envoy::UNCOMPRESS => match envoy::uncompress(&args) {
            Ok(v) => (Status::Ok, Some(v)),
            Err(s) => (s, None),
        },
        // Envoy has them: they run there, and write the out-parameters as any function that ran.
        n if envoy::UNIMPLEMENTED.contains(&n) => (Status::Unimplemented, None),
        _ => {
            record(c.data(), &name, Status::NotFound);
            return Ok(Status::NotFound as i32);
        }
    };
    record(c.data(), &name, status);
    let size = out.as_ref().map_or(0, Vec::len) as u32;
    let mut ptr = 0;
    if pp != 0
        && let Some(out) = &out
    {
        ptr = tri!(alloc_copy(&mut c, out)?);
    }
    if pp != 0 {
        tri!(write_u32(&mut c, pp, ptr));
    }
    if sp != 0 {
        tri!(write_u32(&mut c, sp, size));
    }
    Ok(status as i32)
}

fn record(d: &VmState, name: &str, status: Status) {
    d.shared.borrow_mut().foreign_calls.push(ForeignCall {
        context_id: d.context(),
        name: name.to_string(),
        status,
    });
}

/// Envoy's `set_envoy_filter_state`: parse the arguments (`BadArgument`), find the factory
/// named by the path (`NotFound`), make the object (`BadArgument`), then set it on the acting
/// stream's filter state (`NotFound` without a stream). On an HTTP stream an object set again
/// with another life span is left as it was (Envoy reports a bug and goes on: `Ok`).
fn set_envoy_filter_state(d: &mut VmState, args: &[u8]) -> Status {
    let a = match SetEnvoyFilterState::decode(args) {
        Ok(a) => a,
        Err(s) => return s,
    };
    let object = match envoy::filter_state_object(&a.path, a.value.as_bytes()) {
        Ok(o) => o,
        Err(s) => return s,
    };
    let ctx = d.context();
    let Some(s) = d.streams.get_mut(&ctx) else {
        return Status::NotFound;
    };
    if !s.network
        && let Some((_, span)) = s.envoy_filter_state.get(&a.path)
        && *span != a.span
    {
        return Status::Ok;
    }
    s.envoy_filter_state
        .insert(a.path.clone(), (object, a.span));
    d.shared
        .borrow_mut()
        .filter_states_set
        .push(FilterStateSet {
            context_id: ctx,
            name: a.path,
            value: a.value.into_bytes(),
            span: a.span,
        });
    Status::Ok
}

/// Envoy's `clear_route_cache`: the HTTP connection manager picks the route again (on a stream;
/// elsewhere nothing happens). Always `Ok`.
fn clear_route_cache(d: &mut VmState) -> Status {
    let ctx = d.context();
    if let Some(s) = d.streams.get_mut(&ctx) {
        s.route_cache_cleared += 1;
    }
    Status::Ok
}

/// Envoy's `declare_property`: parse the arguments (`BadArgument`), then keep the prototype on
/// the running context (not the effective one), once per name (`BadArgument` after).
fn declare_property(d: &mut VmState, args: &[u8]) -> Status {
    let a = match DeclareProperty::decode(args) {
        Ok(a) => a,
        Err(s) => return s,
    };
    let declared = d.declared.entry(d.current).or_default();
    if declared.contains_key(&a.name) {
        return Status::BadArgument;
    }
    declared.insert(a.name.clone(), a);
    Status::Ok
}
