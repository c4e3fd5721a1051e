// {{name}}: a proxy-wasm HTTP filter (AssemblyScript, @solo-io/proxy-runtime) that adds one
// header to every response.
//
// Plugin configuration (JSON): {"name": "x-added-by", "value": "{{name}}"}. A configuration that
// is not JSON, or has no "name", makes onConfigure fail with a log line saying why: Envoy then
// refuses the plugin, and `wasmctl dev` shows the line.

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

// The root id this filter registers under (Envoy's config.root_id, wasmctl.yaml's rootId).
const ROOT_ID = "{{name}}";
const EXPECTED = 'expected {"name": "...", "value": "..."}';

class Root extends RootContext {
  headerName: string = "";
  headerValue: string = "";

  onConfigure(configuration_size: u32): bool {
    // The base class reads the plugin configuration into getConfiguration().
    if (configuration_size > 0 && !super.onConfigure(configuration_size)) {
      return false;
    }
    const config = new ConfigParser(configuration_size > 0 ? this.getConfiguration() : "");
    if (!config.parse()) {
      log(LogLevelValues.error, "invalid configuration: " + config.error);
      return false;
    }
    this.headerName = config.name.toLowerCase();
    this.headerValue = config.value;
    log(LogLevelValues.info, "configured: adds " + this.headerName + ": " + this.headerValue);
    return true;
  }

  createContext(context_id: u32): Context {
    return new Filter(context_id, this);
  }
}

// One request and its response.
class Filter extends Context {
  root: Root;

  constructor(context_id: u32, root: Root) {
    super(context_id, root);
    this.root = root;
  }

  onResponseHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.add(this.root.headerName, this.root.headerValue);
    return FilterHeadersStatusValues.Continue;
  }
}

// Reads {"name": "...", "value": "..."} (other members are skipped); `error` says what is wrong.
class ConfigParser {
  text: string;
  pos: i32 = 0;
  error: string = "";
  name: string = "";
  value: string = "";
  hasName: bool = false;
  hasValue: bool = false;

  constructor(text: string) {
    this.text = text;
  }

  parse(): bool {
    this.skipSpace();
    if (this.pos >= this.text.length) {
      return this.fail("empty; " + EXPECTED);
    }
    if (this.peek() != 0x7b /* { */) {
      return this.fail("not a JSON object; " + EXPECTED);
    }
    this.pos++;
    this.skipSpace();
    if (this.peek() == 0x7d /* } */) {
      this.pos++;
    } else {
      while (true) {
        if (this.peek() != 0x22 /* " */) {
          return this.failAt("expected a member name in double quotes");
        }
        const key = this.parseString();
        if (this.error.length > 0) return false;
        this.skipSpace();
        if (this.peek() != 0x3a /* : */) return this.failAt("expected ':'");
        this.pos++;
        this.skipSpace();
        if (key == "name" || key == "value") {
          if (this.peek() != 0x22) {
            return this.fail('"' + key + '" must be a string');
          }
          const text = this.parseString();
          if (this.error.length > 0) return false;
          if (key == "name") {
            this.name = text;
            this.hasName = true;
          } else {
            this.value = text;
            this.hasValue = true;
          }
        } else if (!this.skipValue(0)) {
          return false;
        }
        this.skipSpace();
        const c = this.peek();
        this.pos++;
        if (c == 0x7d /* } */) break;
        if (c != 0x2c /* , */) {
          this.pos--;
          return this.failAt("expected ',' or '}'");
        }
        this.skipSpace();
      }
    }
    this.skipSpace();
    if (this.pos < this.text.length) return this.failAt("text after the JSON object");
    if (!this.hasName) return this.fail('"name" is missing; ' + EXPECTED);
    if (this.name.length == 0) return this.fail('"name" is empty');
    if (!this.hasValue) return this.fail('"value" is missing; ' + EXPECTED);
    return true;
  }

  fail(message: string): bool {
    if (this.error.length == 0) this.error = message;
    return false;
  }

  failAt(message: string): bool {
    return this.fail("not JSON (" + message + " at offset " + this.pos.toString() + "); " + EXPECTED);
  }

  // The code unit at pos, or -1 at the end.
  peek(): i32 {
    return this.pos < this.text.length ? this.text.charCodeAt(this.pos) : -1;
  }

  skipSpace(): void {
    while (true) {
      const c = this.peek();
      if (c != 0x20 && c != 0x09 && c != 0x0a && c != 0x0d) return;
      this.pos++;
    }
  }

  // A JSON string at pos (its opening quote); sets `error` when it is malformed.
  parseString(): string {
    let out = "";
    this.pos++;
    while (true) {
      const c = this.peek();
      if (c < 0) {
        this.failAt("unterminated string");
        return "";
      }
      this.pos++;
      if (c == 0x22 /* " */) return out;
      if (c < 0x20) {
        this.pos--;
        this.failAt("control character in a string");
        return "";
      }
      if (c != 0x5c /* \ */) {
        out += String.fromCharCode(c);
        continue;
      }
      const e = this.peek();
      this.pos++;
      if (e == 0x22 || e == 0x5c || e == 0x2f) out += String.fromCharCode(e);
      else if (e == 0x62 /* b */) out += "\b";
      else if (e == 0x66 /* f */) out += "\f";
      else if (e == 0x6e /* n */) out += "\n";
      else if (e == 0x72 /* r */) out += "\r";
      else if (e == 0x74 /* t */) out += "\t";
      else if (e == 0x75 /* u */) {
        let unit = 0;
        for (let i = 0; i < 4; i++) {
          const h = this.peek();
          this.pos++;
          let d = -1;
          if (h >= 0x30 && h <= 0x39) d = h - 0x30;
          else if (h >= 0x61 && h <= 0x66) d = h - 0x61 + 10;
          else if (h >= 0x41 && h <= 0x46) d = h - 0x41 + 10;
          if (d < 0) {
            this.pos--;
            this.failAt("bad \\u escape");
            return "";
          }
          unit = unit * 16 + d;
        }
        out += String.fromCharCode(unit);
      } else {
        this.pos--;
        this.failAt("bad escape");
        return "";
      }
    }
    return out;
  }

  // Skips any JSON value at pos.
  skipValue(depth: i32): bool {
    if (depth > 64) return this.failAt("nested too deep");
    const c = this.peek();
    if (c == 0x22) {
      this.parseString();
      return this.error.length == 0;
    }
    if (c == 0x7b /* { */ || c == 0x5b /* [ */) {
      const close = c == 0x7b ? 0x7d : 0x5d;
      this.pos++;
      this.skipSpace();
      if (this.peek() == close) {
        this.pos++;
        return true;
      }
      while (true) {
        if (c == 0x7b) {
          if (this.peek() != 0x22) return this.failAt("expected a member name in double quotes");
          this.parseString();
          if (this.error.length > 0) return false;
          this.skipSpace();
          if (this.peek() != 0x3a) return this.failAt("expected ':'");
          this.pos++;
          this.skipSpace();
        }
        if (!this.skipValue(depth + 1)) return false;
        this.skipSpace();
        const n = this.peek();
        this.pos++;
        if (n == close) return true;
        if (n != 0x2c) {
          this.pos--;
          return this.failAt("expected ',' or '" + String.fromCharCode(close) + "'");
        }
        this.skipSpace();
      }
    }
    if (this.skipWord("true") || this.skipWord("false") || this.skipWord("null")) return true;
    // A number: -?digits[.digits][(e|E)[+|-]digits]
    const start = this.pos;
    if (this.peek() == 0x2d /* - */) this.pos++;
    if (this.skipDigits() == 0) {
      this.pos = start;
      return this.failAt("expected a value");
    }
    if (this.peek() == 0x2e /* . */) {
      this.pos++;
      if (this.skipDigits() == 0) return this.failAt("expected a digit");
    }
    if (this.peek() == 0x65 || this.peek() == 0x45) {
      this.pos++;
      if (this.peek() == 0x2b || this.peek() == 0x2d) this.pos++;
      if (this.skipDigits() == 0) return this.failAt("expected a digit");
    }
    return true;
  }

  skipWord(word: string): bool {
    if (this.text.substring(this.pos, this.pos + word.length) != word) return false;
    this.pos += word.length;
    return true;
  }

  skipDigits(): i32 {
    let n = 0;
    while (this.peek() >= 0x30 && this.peek() <= 0x39) {
      this.pos++;
      n++;
    }
    return n;
  }
}

registerRootContext((context_id: u32): RootContext => new Root(context_id), ROOT_ID);
