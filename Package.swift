// swift-tools-version:6.0
import Foundation
import PackageDescription

// System libraries come from Debian's -dev packages (libopenmpi-dev, libopenblas-dev,
// libhdf5-dev, libdnnl-dev, ...), found through pkg-config where the package has a .pc file.
// MPI: Open MPI by default; MTL_MPI=mpich at build time builds against MPICH (libmpich-dev, its
// pkg-config name `mpich`) — use a separate build directory (--scratch-path) for it.
let mpich = ProcessInfo.processInfo.environment["MTL_MPI"] == "mpich"

// The CPU mtl's own loops are compiled for (GEMMs and convolutions come from OpenBLAS and oneDNN,
// which pick their kernels at run time). Swift's default, baseline x86-64, has no AVX and no
// FMA: every `addingProduct` becomes a call into libm and vector loops are 4 wide. So on an
// x86-64 host with AVX2 + FMA (Haswell and later, every AMD Zen) we compile for `haswell`,
// which runs on every such CPU — results are the same bits, since Swift never fuses a·b + c on
// its own. MTL_TARGET_CPU overrides it: `x86-64` for a binary that also runs on older CPUs,
// or any `-target-cpu` name (e.g. `skylake-avx512`, only for nodes that all have AVX-512).
func targetCPU() -> String? {
    if let cpu = ProcessInfo.processInfo.environment["MTL_TARGET_CPU"], !cpu.isEmpty { return cpu }
    #if arch(x86_64) && os(Linux)
    guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
          let flags = info.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) else { return nil }
    let have = Set(flags.split(separator: " ").map(String.init))
    return have.isSuperset(of: ["avx2", "fma", "f16c", "bmi2"]) ? "haswell" : nil
    #else
    return nil
    #endif
}
let cpuSettings: [SwiftSetting] = targetCPU().map { [.unsafeFlags(["-target-cpu", $0])] } ?? []
let package = Package(
    name: "mtl",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "mtl", targets: ["mtl"]),
        .executable(name: "mtl-commcheck", targets: ["mtl-commcheck"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.0"),
    ],
    targets: [
        .systemLibrary(name: "CMPI", path: "Sources/CMPI", pkgConfig: mpich ? "mpich" : "ompi-c",
                       providers: [.apt([mpich ? "libmpich-dev" : "libopenmpi-dev"])]),
        .systemLibrary(name: "CBLAS", path: "Sources/CBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CHDF5", path: "Sources/CHDF5", pkgConfig: "hdf5-serial",
                       providers: [.apt(["libhdf5-dev"])]),
        .systemLibrary(name: "CPNG", path: "Sources/CPNG", pkgConfig: "libpng",
                       providers: [.apt(["libpng-dev"])]),
        .systemLibrary(name: "CJPEG", path: "Sources/CJPEG", pkgConfig: "libjpeg",
                       providers: [.apt(["libjpeg62-turbo-dev"])]),
        .target(name: "MTLCore", dependencies: ["CBLAS", "CHDF5"]),
        .systemLibrary(name: "CZlib", path: "Sources/CZlib", pkgConfig: "zlib",
                       providers: [.apt(["zlib1g-dev"])]),
        .target(name: "MTLConvert", dependencies: ["MTLCore", "CPNG", "CJPEG", "CZlib"]),
        // oneDNN has no pkg-config file: the header comes from the default include path
        // (/usr/include/oneapi/dnnl) and the module map links libdnnl.
        .systemLibrary(name: "CDNNL", path: "Sources/CDNNL", providers: [.apt(["libdnnl-dev"])]),
        .target(name: "MTLNN", dependencies: ["MTLCore", "CDNNL"]),
        .target(name: "MTLModels", dependencies: ["MTLCore", "MTLNN"]),
        .target(name: "MTLData", dependencies: ["MTLCore"]),
        .target(name: "MTLDist", dependencies: ["MTLCore", "CMPI"]),
        .target(name: "MTLMethods", dependencies: ["MTLCore"]),
        .target(name: "MTLTrain", dependencies: ["MTLCore", "MTLMethods", "MTLModels", .product(name: "Yams", package: "Yams")]),
        .target(name: "MTLReport", dependencies: ["MTLCore"]),
        .target(name: "MTLEngine", dependencies: ["MTLCore", "MTLNN", "MTLModels", "MTLData",
                                                  "MTLDist", "MTLMethods", "MTLTrain", "MTLConvert", "MTLReport"]),
        .executableTarget(name: "mtl", dependencies: [
            "MTLConvert", "MTLCore", "MTLData", "MTLDist", "MTLEngine", "MTLMethods", "MTLReport", "MTLTrain",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "mtl-commcheck", dependencies: ["MTLDist"]),
        .testTarget(name: "MTLCoreTests", dependencies: ["MTLCore"]),
        // What the tests share: the tensor exchange with the PyTorch reference scripts, finite-difference
        // checks, and running `mtl` / mpirun subprocesses and reading their run directories.
        .target(name: "MTLTestSupport", dependencies: ["MTLCore"], path: "Tests/MTLTestSupport"),
        .testTarget(name: "MTLNNTests", dependencies: ["MTLNN", "MTLTestSupport"]),
        .testTarget(name: "MTLModelsTests", dependencies: ["MTLModels", "MTLTestSupport"]),
        .testTarget(name: "MTLDataTests", dependencies: ["MTLData", "MTLTestSupport"]),
        .testTarget(name: "MTLTrainTests", dependencies: ["MTLTrain"]),
        .testTarget(name: "MTLEngineTests", dependencies: ["MTLEngine", "MTLTestSupport"]),
        .testTarget(name: "MTLDistTests", dependencies: ["MTLDist", "MTLTestSupport"]),
        .testTarget(name: "MTLMethodsTests", dependencies: ["MTLMethods"]),
        .testTarget(name: "MTLReportTests", dependencies: ["MTLReport"]),
        .testTarget(name: "MTLConvertTests", dependencies: ["MTLConvert", "MTLData", "MTLTestSupport"]),
    ],
    swiftLanguageModes: [.v5]
)

for target in package.targets where target.type != .system {
    target.swiftSettings = (target.swiftSettings ?? []) + cpuSettings
}
