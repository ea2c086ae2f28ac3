//! Generates the raw bindings of `include/dv_api.h` with bindgen (libclang from Debian's
//! `libclang-dev`), and links a vendor Data Vortex library when `DV_LIB` names one
//! (searched in `DV_LIB_DIR` if set). Without `DV_LIB` the `hw-sim` emulator, a Rust
//! dependency, provides the symbols.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=include/dv_api.h");
    println!("cargo:rerun-if-env-changed=DV_LIB");
    println!("cargo:rerun-if-env-changed=DV_LIB_DIR");
    println!("cargo::rustc-check-cfg=cfg(dv_vendor)");

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bindings = bindgen::Builder::default()
        .header("include/dv_api.h")
        .allowlist_function("dv_.*")
        .allowlist_type("dv_.*")
        .allowlist_var("DV_.*")
        .opaque_type("dv_endpoint")
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .unwrap_or_else(|e| {
            panic!(
                "bindgen could not parse include/dv_api.h ({e}); is libclang installed \
                 (apt-get install -y libclang-dev)?"
            )
        });
    bindings
        .write_to_file(out.join("dv_api.rs"))
        .expect("writing the generated bindings");

    if let Ok(lib) = env::var("DV_LIB") {
        if let Ok(dir) = env::var("DV_LIB_DIR") {
            println!("cargo:rustc-link-search=native={dir}");
        }
        println!("cargo:rustc-link-lib=dylib={lib}");
        println!("cargo:rustc-cfg=dv_vendor");
    }
}
