//! A wasi:http@0.2 "hello" handler for native `wasmtime serve`, the benchmark's baseline.
//!
//! Every request gets 200, `content-type: text/plain` and the hello body, like the agent's
//! WAGI `hello-rust` example. The canonical ABI is written out by hand because Debian's rustc
//! (the only one here with a wasm32 core library) is too old for `wit-bindgen`'s Rust output.
//! `wasm-tools component new` checks every import and export below against `wit/world.wit`,
//! so a wrong signature fails the build rather than a request.
//!
//! `wasmtime serve` may reuse an instance for several requests, so nothing here may leak
//! across calls: each handle is consumed or dropped, and the scratch heap is reset per call.
#![no_std]

use core::arch::wasm32;

const BODY: &[u8] = b"Hello from a Rust Wasm microservice!\n";
const CONTENT_LENGTH: &[u8] = b"37";
const _: () = assert!(BODY.len() == 37, "CONTENT_LENGTH must match BODY");

#[link(wasm_import_module = "wasi:http/types@0.2.12")]
extern "C" {
    #[link_name = "[static]fields.from-list"]
    fn fields_from_list(entries: *const Field, len: usize, ret: *mut RetArea);
    #[link_name = "[constructor]outgoing-response"]
    fn outgoing_response_new(headers: u32) -> u32;
    #[link_name = "[method]outgoing-response.body"]
    fn outgoing_response_body(response: u32, ret: *mut RetArea);
    #[link_name = "[method]outgoing-body.write"]
    fn outgoing_body_write(body: u32, ret: *mut RetArea);
    #[link_name = "[static]outgoing-body.finish"]
    fn outgoing_body_finish(body: u32, has_trailers: u32, trailers: u32, ret: *mut RetArea);
    // `result<outgoing-response, error-code>` flattens to a discriminant and the join of
    // both cases' flat types: error-code's widest case is 7 values, with an i64 (option<u64>).
    #[link_name = "[static]response-outparam.set"]
    fn response_outparam_set(
        param: u32,
        is_err: u32,
        response: u32,
        e1: u32,
        e2: i64,
        e3: u32,
        e4: u32,
        e5: u32,
        e6: u32,
    );
    #[link_name = "[resource-drop]incoming-request"]
    fn incoming_request_drop(request: u32);
}

#[link(wasm_import_module = "wasi:io/streams@0.2.12")]
extern "C" {
    #[link_name = "[method]output-stream.blocking-write-and-flush"]
    fn output_stream_blocking_write_and_flush(
        stream: u32,
        data: *const u8,
        len: usize,
        ret: *mut RetArea,
    );
    #[link_name = "[resource-drop]output-stream"]
    fn output_stream_drop(stream: u32);
}

#[link(wasm_import_module = "wasi:io/error@0.2.12")]
extern "C" {
    #[link_name = "[resource-drop]error"]
    fn error_drop(error: u32);
}

/// `tuple<field-name, field-value>` in linear memory: (string, list<u8>).
#[repr(C)]
struct Field {
    name: *const u8,
    name_len: usize,
    value: *const u8,
    value_len: usize,
}

fn field(name: &'static [u8], value: &'static [u8]) -> Field {
    Field {
        name: name.as_ptr(),
        name_len: name.len(),
        value: value.as_ptr(),
        value_len: value.len(),
    }
}

/// Where imports with more than one flat result write it. The largest is
/// `result<_, error-code>` (40 bytes, 8-aligned because error-code holds an option<u64>).
#[repr(C, align(8))]
struct RetArea([u8; 40]);

impl RetArea {
    const fn new() -> Self {
        RetArea([0; 40])
    }

    /// The discriminant at offset 0: 0 is `ok`, 1 is `err` (and `some`/`none` likewise).
    fn is_err(&self) -> bool {
        self.0[0] != 0
    }

    fn u32_at(&self, offset: usize) -> u32 {
        let b = &self.0[offset..offset + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// The handle in a `result<own<T>, E>` whose error case carries no resources.
    fn ok_handle(&self) -> u32 {
        if self.is_err() {
            wasm32::unreachable();
        }
        self.u32_at(4)
    }
}

#[export_name = "wasi:http/incoming-handler@0.2.12#handle"]
pub extern "C" fn handle(request: u32, response_out: u32) {
    unsafe {
        scratch_reset();
        incoming_request_drop(request);

        // content-length spares hyper the chunked encoding, as the agent's response does.
        let headers = [
            field(b"content-type", b"text/plain"),
            field(b"content-length", CONTENT_LENGTH),
        ];
        let mut ret = RetArea::new();
        fields_from_list(headers.as_ptr(), headers.len(), &mut ret);
        let fields = ret.ok_handle();

        // A new outgoing-response has status 200.
        let response = outgoing_response_new(fields);
        outgoing_response_body(response, &mut ret);
        let body = ret.ok_handle();
        outgoing_body_write(body, &mut ret);
        let stream = ret.ok_handle();
        response_outparam_set(response_out, 0, response, 0, 0, 0, 0, 0, 0);

        // A client gone away is no reason to trap: drop what the host returned and finish.
        output_stream_blocking_write_and_flush(stream, BODY.as_ptr(), BODY.len(), &mut ret);
        if ret.is_err() && ret.0[4] == 0 {
            error_drop(ret.u32_at(8)); // stream-error.last-operation-failed(error)
        }
        output_stream_drop(stream);
        outgoing_body_finish(body, 0, 0, &mut ret); // an error here has nobody left to tell
    }
}

// The host calls cabi_realloc only to lower strings of error results that `handle` ignores,
// so a bump allocator over memory grown on demand, rewound at the start of every call, does.
static mut SCRATCH_BASE: usize = 0;
static mut SCRATCH_NEXT: usize = 0;

const PAGE: usize = 65536;

unsafe fn scratch_reset() {
    if SCRATCH_BASE == 0 {
        SCRATCH_BASE = wasm32::memory_size(0) * PAGE;
    }
    SCRATCH_NEXT = SCRATCH_BASE;
}

#[no_mangle]
pub unsafe extern "C" fn cabi_realloc(
    old: *mut u8,
    old_size: usize,
    align: usize,
    new_size: usize,
) -> *mut u8 {
    if SCRATCH_BASE == 0 {
        scratch_reset();
    }
    let start = (SCRATCH_NEXT + align - 1) & !(align - 1);
    let end = start + new_size;
    let top = wasm32::memory_size(0) * PAGE;
    if end > top && wasm32::memory_grow(0, (end - top + PAGE - 1) / PAGE) == usize::MAX {
        wasm32::unreachable();
    }
    SCRATCH_NEXT = end;
    if !old.is_null() {
        core::ptr::copy_nonoverlapping(old, start as *mut u8, old_size.min(new_size));
    }
    start as *mut u8
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    wasm32::unreachable()
}
