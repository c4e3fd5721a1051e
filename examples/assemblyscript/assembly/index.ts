// A proxy-wasm HTTP filter written with the AssemblyScript SDK (@solo-io/proxy-runtime).
//
// The plugin configuration is a plain string. At configure the filter logs it at info; on every
// response it adds the header `x-as-filter: <configuration>`.

// The ABI exports (proxy_on_*, malloc, proxy_abi_version_0_2_0) the host calls.
export * from "@solo-io/proxy-runtime/proxy";
import {
  Context,
  FilterHeadersStatusValues,
  LogLevelValues,
  RootContext,
  log,
  registerRootContext,
  stream_context,
} from "@solo-io/proxy-runtime";

const ROOT_ID = "as_filter";
const HEADER = "x-as-filter";

class AsFilterRoot extends RootContext {
  onConfigure(configuration_size: u32): bool {
    // The base class reads the plugin configuration into getConfiguration().
    if (!super.onConfigure(configuration_size)) {
      return false;
    }
    log(LogLevelValues.info, "as-filter: configured " + this.getConfiguration());
    return true;
  }

  createContext(context_id: u32): Context {
    return new AsFilter(context_id, this);
  }
}

class AsFilter extends Context {
  onResponseHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.add(HEADER, this.root_context.getConfiguration());
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32): RootContext => new AsFilterRoot(context_id), ROOT_ID);
