//! The only caller of host functions. Every call returns a `Result` and no status panics.
//!
//! The SDK's `hostcalls` panic on statuses they do not expect (a header read on a callout that
//! was reset returns BadArgument), and a panic traps the VM; so this module imports the ABI
//! functions itself. One exception: `dispatch_http_call` must go through the SDK, which
//! registers the token for `on_http_call_response`; it returns Ok, BadArgument or
//! InternalFailure, all handled there.

use std::ptr::{null, null_mut};
use std::time::Duration;

use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType};

/// A non-Ok status from the host (proxy-wasm ABI numbering).
pub type Status = u32;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message: *const u8, size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(out: *mut u64) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        out: *mut *mut u8,
        out_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_buffer_bytes(buffer: u32, start: usize, max: usize, out: *mut *mut u8, out_size: *mut usize) -> u32;
    fn proxy_continue_stream(stream: u32) -> u32;
    fn proxy_call_foreign_function(
        name: *const u8,
        name_size: usize,
        args: *const u8,
        args_size: usize,
        out: *mut *mut u8,
        out_size: *mut usize,
    ) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, out: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
}

fn status(s: u32) -> Result<(), Status> {
    if s == 0 {
        Ok(())
    } else {
        Err(s)
    }
}

/// Takes ownership of a host-allocated buffer (allocated through the SDK's
/// `proxy_on_memory_allocate`, as a `Vec<u8>` of exactly `size` bytes).
fn owned(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        return Vec::new();
    }
    // SAFETY: the host filled `data` with `size` bytes it allocated through our allocator.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

pub fn log(level: LogLevel, message: &str) {
    // SAFETY: pointer and length of a live &str.
    let _ = unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) };
}

/// Nanoseconds since the epoch; 0 if the host cannot say.
pub fn now_ns() -> u64 {
    let mut t = 0u64;
    // SAFETY: `t` outlives the call.
    match status(unsafe { proxy_get_current_time_nanoseconds(&mut t) }) {
        Ok(()) => t,
        Err(_) => 0,
    }
}

fn header(map: MapType, key: &str) -> Result<Option<Vec<u8>>, Status> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: out-pointers outlive the call; the key is a live &str.
    match unsafe { proxy_get_header_map_value(map as u32, key.as_ptr(), key.len(), &mut data, &mut size) } {
        0 => Ok(Some(owned(data, size))),
        1 => Ok(None), // NotFound
        s => Err(s),
    }
}

/// A request header as text (`None` if absent, unreadable or not UTF-8).
pub fn request_header(key: &str) -> Option<String> {
    header(MapType::HttpRequestHeaders, key).ok().flatten().and_then(|v| String::from_utf8(v).ok())
}

/// The `:status` of a callout answer (`None` for a reset callout without headers).
pub fn call_status() -> Option<Vec<u8>> {
    header(MapType::HttpCallResponseHeaders, ":status").ok().flatten()
}

pub fn set_request_header(key: &str, value: &str) -> Result<(), Status> {
    set_header(MapType::HttpRequestHeaders, key, value)
}

pub fn set_response_header(key: &str, value: &str) -> Result<(), Status> {
    set_header(MapType::HttpResponseHeaders, key, value)
}

fn set_header(map: MapType, key: &str, value: &str) -> Result<(), Status> {
    // SAFETY: pointers and lengths of live &strs.
    status(unsafe { proxy_replace_header_map_value(map as u32, key.as_ptr(), key.len(), value.as_ptr(), value.len()) })
}

fn buffer(kind: BufferType, size: usize) -> Result<Vec<u8>, Status> {
    let (mut data, mut out) = (null_mut(), 0usize);
    // SAFETY: out-pointers outlive the call.
    match unsafe { proxy_get_buffer_bytes(kind as u32, 0, size, &mut data, &mut out) } {
        0 => Ok(owned(data, out)),
        1 => Ok(Vec::new()),
        s => Err(s),
    }
}

pub fn request_body(size: usize) -> Result<Vec<u8>, Status> {
    buffer(BufferType::HttpRequestBody, size)
}

pub fn call_body(size: usize) -> Result<Vec<u8>, Status> {
    buffer(BufferType::HttpCallResponseBody, size)
}

pub fn plugin_configuration() -> Result<Vec<u8>, Status> {
    buffer(BufferType::PluginConfiguration, usize::MAX)
}

/// Sends a probe; the token comes back in `on_http_call_response`.
pub fn dispatch(cluster: &str, path: &str, authority: &str, body: &[u8], timeout_ms: u64) -> Result<u32, Status> {
    let headers =
        vec![(":method", "POST"), (":path", path), (":authority", authority), ("content-type", "application/json")];
    proxy_wasm::hostcalls::dispatch_http_call(cluster, headers, Some(body), vec![], Duration::from_millis(timeout_ms))
        .map_err(|s| s as u32)
}

pub fn resume_request() -> Result<(), Status> {
    // SAFETY: no pointers. Stream type 0 = the HTTP request.
    status(unsafe { proxy_continue_stream(0) })
}

/// Makes Envoy pick the route again after the pool header changed.
pub fn clear_route_cache() -> Result<(), Status> {
    let name = "clear_route_cache";
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: pointers of a live &str, a null argument buffer, out-pointers outliving the call.
    let s = unsafe { proxy_call_foreign_function(name.as_ptr(), name.len(), null(), 0, &mut data, &mut size) };
    drop(owned(data, size));
    status(s)
}

pub fn define_metric(kind: MetricType, name: &str) -> Result<u32, Status> {
    let mut id = 0u32;
    // SAFETY: pointer and length of a live &str; `id` outlives the call.
    status(unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) }).map(|()| id)
}

pub fn increment(id: Option<u32>) {
    if let Some(id) = id {
        // SAFETY: no pointers.
        let _ = unsafe { proxy_increment_metric(id, 1) };
    }
}

pub fn record(id: Option<u32>, value: u64) {
    if let Some(id) = id {
        // SAFETY: no pointers.
        let _ = unsafe { proxy_record_metric(id, value) };
    }
}
