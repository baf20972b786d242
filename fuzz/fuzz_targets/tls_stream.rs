#![no_main]

use std::sync::LazyLock;

use dbtape::fuzzing::TlsStreamSetup;

// A throwaway test CA and server key, made for fuzzing alone (fuzz/tls/).
static SETUP: LazyLock<TlsStreamSetup> = LazyLock::new(|| {
    TlsStreamSetup::from_pem(include_bytes!("../tls/ca.crt"), include_bytes!("../tls/server.crt"), include_bytes!("../tls/server.key"))
        .expect("fuzz/tls holds a valid CA, certificate and key")
});

libfuzzer_sys::fuzz_target!(|data: &[u8]| dbtape::fuzzing::tls_stream(&SETUP, data));
