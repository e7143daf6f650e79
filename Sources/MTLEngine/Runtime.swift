import Foundation
import MTLCore
import MTLDist
import MTLNN
import MTLTrain

/// What the process runs on and with: the environment the numerical libraries need (set before
/// they start their threads), the convolution backend, and the one report that `mtl doctor`,
/// `mtl bench` and the head of train.log print.
public enum Runtime {
    /// Set in the environment of a re-executed mtl: the variables mtl set ("" when none), so the
    /// report can say which values came from mtl and so that the process re-executes only once.
    static let tunedMarker = "MTL_ENV_TUNED"

    /// OpenBLAS kernels that predate AVX2 (and Debian 0.3.21's fallback on CPUs it does not
    /// know, such as Sapphire Rapids: "Prescott", SSE3, ~¼ of the machine's sgemm speed).
    static let preAVX2Cores: Set<String> = ["prescott", "core2", "penryn", "dunnington", "nehalem", "atom", "katmai",
                                            "coppermine", "northwood", "banias", "athlon", "opteron", "opteron_sse3",
                                            "barcelona", "bobcat", "nano", "sandybridge", "bulldozer", "piledriver",
                                            "steamroller", "excavator", "unknown", "generic"]

    /// ~0.2 ms of spinning (libgomp counts ~100 000 spins per ms): long enough to bridge the serial
    /// stretches between a step's parallel regions, short enough not to hold a core between steps.
    static let openMPSpinCount = 20_000

    /// The variables that the numerical libraries read once, when they load, and the values mtl
    /// wants for them on this CPU; a variable the user set is never in the list.
    /// - OPENBLAS_CORETYPE: SkylakeX (AVX-512) or Haswell (AVX2 + FMA) when OpenBLAS picked a
    ///   pre-AVX2 kernel on a CPU that has those instructions.
    /// - GOMP_SPINCOUNT=`openMPSpinCount`: how long an idle OpenMP worker spins before it sleeps.
    ///   mtl's loops and oneDNN share libgomp's team (`concurrentRun`); libgomp's default, ~3 ms
    ///   of spinning (300 000 spins), takes a core from the other ranks of an oversubscribed node
    ///   and from the loader thread, while waiting 0 (OMP_WAIT_POLICY=passive) puts a futex
    ///   wake-up at the start of each of a step's ~2000 short parallel regions. Unless the user set
    ///   GOMP_SPINCOUNT or OMP_WAIT_POLICY.
    static func wantedEnvironment(_ env: [String: String], cpu: CPUInfo, blasCore: String) -> [(String, String)] {
        var wanted: [(String, String)] = []
        if env["OPENBLAS_CORETYPE"] == nil && preAVX2Cores.contains(blasCore.lowercased()) {
            if cpu.has("avx512f") && cpu.has("avx512vl") && cpu.has("avx512bw") && cpu.has("avx512dq") {
                wanted.append(("OPENBLAS_CORETYPE", "SkylakeX"))
            } else if cpu.has("avx2") && cpu.has("fma") {
                wanted.append(("OPENBLAS_CORETYPE", "Haswell"))
            }
        }
        if env["OMP_WAIT_POLICY"] == nil && env["GOMP_SPINCOUNT"] == nil {
            wanted.append(("GOMP_SPINCOUNT", String(openMPSpinCount)))
        }
        return wanted
    }

    /// Call first thing in main, before MPI_Init and before any BLAS or oneDNN call: when the
    /// environment lacks a value from `wantedEnvironment`, sets it and re-executes the same
    /// binary with the same arguments (same PID, so mpirun, srun and Slurm keep tracking it; MPI
    /// is not initialised yet). Only once: the re-executed process carries `MTL_ENV_TUNED`.
    public static func tuneEnvironmentAndReexec() {
        let env = ProcessInfo.processInfo.environment
        if env[tunedMarker] != nil { return }
        let wanted = wantedEnvironment(env, cpu: CPUInfo.current, blasCore: BLASLibrary.coreName)
        guard !wanted.isEmpty else { return }
        for (k, v) in wanted { setenv(k, v, 1) }
        let settings = wanted.map { "\($0.0)=\($0.1)" }.joined(separator: " ")
        // Under valgrind an exec would leave the tool (it does not follow children by default):
        // run with the libraries as they loaded, and say so in the report.
        if env["LD_PRELOAD"]?.contains("vgpreload") == true {
            setenv(tunedMarker, "not re-executed under valgrind; wanted \(settings)", 1)
            return
        }
        setenv(tunedMarker, settings, 1)
        let args = CommandLine.arguments
        var cargs: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) }
        cargs.append(nil)
        execv("/proc/self/exe", cargs)
        // execv returns only on failure: carry on with the libraries as they are (the report says so).
        setenv(tunedMarker, "re-exec failed (\(String(cString: strerror(errno)))); wanted " +
               wanted.map { "\($0.0)=\($0.1)" }.joined(separator: " "), 1)
    }

    /// `model.conv_backend` / `mtl bench --conv-backend`: auto = oneDNN where it has a CPU engine.
    @discardableResult
    public static func selectConvBackend(_ name: String) throws -> ConvBackend {
        let backend: ConvBackend
        switch name {
        case "auto": backend = OneDNN.available ? .onednn : .blas
        case "onednn":
            guard OneDNN.available else {
                throw MTLError("model.conv_backend: onednn requested, but oneDNN could not create a CPU engine here; use auto or blas")
            }
            backend = .onednn
        case "blas": backend = .blas
        default: throw MTLError("model.conv_backend: expected auto | onednn | blas, found '\(name)'")
        }
        Conv2d.backend = backend
        return backend
    }

    /// The performance switches of a run: from the config (`dist.overlap`, `dist.bucket_mb`,
    /// `model.conv_dx`, `train.blas_threads`), each of which an environment variable may override
    /// for debugging (MTL_NO_OVERLAP=1, MTL_BUCKET_MB, MTL_CONV_DX, MTL_BLAS_THREADS). Applies the
    /// process-wide ones (threads, convolution input gradient) and returns the gradient plan's
    /// options with one line per override, for train.log. A malformed override is an error.
    public static func applyPerformanceSwitches(_ config: Config, threads: Int,
                                                environment env: [String: String] = ProcessInfo.processInfo.environment)
        throws -> (sync: SyncOptions, overrides: [String]) {
        var sync = SyncOptions(overlap: config.dist.overlap, bucketMB: config.dist.bucketMB)
        var convDx = config.model.convDx, blasThreads = config.train.blasThreads
        var overrides: [String] = []
        func note(_ variable: String, _ key: String, _ from: String) {
            overrides.append("environment \(variable)=\(env[variable]!) overrides \(key): \(from)")
        }
        if env["MTL_NO_OVERLAP"] != nil {
            note("MTL_NO_OVERLAP", "dist.overlap", "\(sync.overlap)")
            sync.overlap = false
        }
        if let v = env["MTL_BUCKET_MB"] {
            guard let mb = Double(v), mb > 0 else { throw MTLError("environment MTL_BUCKET_MB: expected a number > 0 (MiB), found '\(v)'") }
            note("MTL_BUCKET_MB", "dist.bucket_mb", "\(sync.bucketMB)")
            sync.bucketMB = mb
        }
        if let v = env["MTL_CONV_DX"] {
            guard Config.convDxs.contains(v) else { throw MTLError("environment MTL_CONV_DX: expected \(Config.convDxs.joined(separator: "|")), found '\(v)'") }
            note("MTL_CONV_DX", "model.conv_dx", convDx)
            convDx = v
        }
        if let v = env["MTL_BLAS_THREADS"] {
            guard Config.blasThreadOwners.contains(v) else { throw MTLError("environment MTL_BLAS_THREADS: expected \(Config.blasThreadOwners.joined(separator: "|")), found '\(v)'") }
            note("MTL_BLAS_THREADS", "train.blas_threads", blasThreads)
            blasThreads = v
        }
        Conv2d.transposedInputGrad = convDx == "transposed"
        Threads.set(threads, splitGemms: blasThreads == "mtl")
        return (sync, overrides)
    }

    /// One line per library: CPU and ISA, BLAS core, oneDNN version/ISA/kernels, threads, MPI, HDF5.
    public static func report(threadsPerRank: Int, ranks: Int? = nil) -> [String] {
        let cpu = CPUInfo.current
        let env = ProcessInfo.processInfo.environment
        let setByMTL = env[tunedMarker].map { $0.isEmpty ? "" : " [set by mtl: \($0)]" } ?? ""
        func envValue(_ k: String) -> String { env[k].map { "\(k)=\($0)" } ?? "\(k) unset" }
        var lines = [
            "cpu: \(cpu.model) (\(cpu.cores) core(s) online); ISA \(cpu.isaSummary)",
            "blas: \(BLASLibrary.config); core in use \(BLASLibrary.coreName); \(envValue("OPENBLAS_CORETYPE"))",
            "onednn: " + (OneDNN.available
                ? "\(OneDNN.version), ISA \(OneDNN.isa); \(envValue("GOMP_SPINCOUNT")), \(envValue("OMP_WAIT_POLICY")); conv backend \(Conv2d.backend.rawValue); kernels: \(OneDNN.implementationCounts.isEmpty ? "(listed after the first step)" : OneDNN.implementationSummary)"
                : "no CPU engine; conv backend \(Conv2d.backend.rawValue)"),
            "threads per rank: \(threadsPerRank)" + (ranks.map { "; ranks: \($0)" } ?? ""),
            "mpi: \(MPILibrary.version)",
            "hdf5: \(HDF5Library.version)",
        ]
        if !setByMTL.isEmpty { lines[0] += setByMTL }
        return lines
    }
}

/// The CPU as /proc/cpuinfo describes it (Linux).
public struct CPUInfo: Sendable {
    public var model: String
    public var flags: Set<String>
    public var cores: Int

    public init(model: String, flags: Set<String>, cores: Int) {
        self.model = model
        self.flags = flags
        self.cores = cores
    }

    /// `flags` as /proc/cpuinfo writes them (space-separated).
    public init(model: String, cores: Int, flags: String) {
        self.init(model: model, flags: Set(flags.split(separator: " ").map(String.init)), cores: cores)
    }

    public func has(_ flag: String) -> Bool { flags.contains(flag) }

    /// The instruction sets that decide the kernels: "avx512f avx512_bf16 amx_tile" / "avx2 fma (no avx512)".
    public var isaSummary: String {
        let interesting = ["avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "avx2", "fma"]
        let present = interesting.filter(has)
        return present.isEmpty ? "sse only" : present.joined(separator: " ") + (has("avx512f") ? "" : " (no avx512)")
    }

    public static let current: CPUInfo = {
        let text = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        return parse(text, cores: ProcessInfo.processInfo.activeProcessorCount)
    }()

    static func parse(_ text: String, cores: Int) -> CPUInfo {
        var model = "unknown CPU", flags: Set<String> = []
        for line in text.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let key = line[..<colon].trimmingCharacters(in: .whitespaces)
            let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            if key == "model name" && model == "unknown CPU" { model = value }
            if key == "flags" && flags.isEmpty { flags = Set(value.split(separator: " ").map(String.init)) }
        }
        return CPUInfo(model: model, flags: flags, cores: cores)
    }
}

/// `mtl doctor`'s checks beyond the library report: what a cluster job needs around the process.
public enum Doctor {
    public struct Line: Equatable {
        public var text: String
        /// A missing requirement: `mtl doctor` exits non-zero.
        public var failed: Bool
    }

    /// The directory of the first `names` entry found on PATH, or nil.
    static func onPath(_ names: [String], _ env: [String: String]) -> String? {
        for dir in (env["PATH"] ?? "").split(separator: ":") {
            for n in names where FileManager.default.isExecutableFile(atPath: "\(dir)/\(n)") { return "\(dir)/\(n)" }
        }
        return nil
    }

    /// Launchers on PATH, Slurm variables, HDF5 file locking, and the run directory: writable, an
    /// HDF5 file can be created there (file locking fails on some network file systems unless
    /// HDF5_USE_FILE_LOCKING=FALSE), and at least `minimumFreeGiB` free.
    public static func checks(runDirectory: String, threadsPerRank: Int, minimumFreeGiB: Double = 1,
                              environment env: [String: String] = ProcessInfo.processInfo.environment) -> [Line] {
        var lines: [Line] = []
        let mpirun = onPath(["mpirun", "mpiexec"], env)
        lines.append(Line(text: "launchers: mpirun \(mpirun ?? "not on PATH (needed for several ranks)"); srun \(onPath(["srun"], env) ?? "not on PATH")",
                          failed: false))
        let slurm = ["SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_CPUS_PER_TASK", "SLURM_LOCALID",
                     "SLURM_JOB_NODELIST"].compactMap { k in env[k].map { "\(k)=\($0)" } }
        lines.append(Line(text: "slurm: " + (slurm.isEmpty ? "no SLURM_* variables (not inside a Slurm job)" : slurm.joined(separator: " ")),
                          failed: false))
        lines.append(Line(text: "threads per rank mtl train would use: \(threadsPerRank) (train.threads, else MTL_THREADS, SLURM_CPUS_PER_TASK, OMP_NUM_THREADS, else cores / local ranks)",
                          failed: false))
        lines.append(Line(text: "hdf5 file locking: " + (env["HDF5_USE_FILE_LOCKING"].map { "HDF5_USE_FILE_LOCKING=\($0)" } ?? "on (HDF5_USE_FILE_LOCKING unset)"),
                          failed: false))
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: runDirectory, isDirectory: &isDirectory), isDirectory.boolValue else {
            lines.append(Line(text: "run directory \(runDirectory): does not exist (expected a directory to write runs in)", failed: true))
            return lines
        }
        let probe = runDirectory + "/.mtl-doctor-\(getpid()).h5"
        do {
            let f = try H5File.create(probe)
            try f.write("probe", [Float(1)], shape: [1])
            try f.closeChecked()
            try? FileManager.default.removeItem(atPath: probe)
        } catch {
            try? FileManager.default.removeItem(atPath: probe)
            let hint = env["HDF5_USE_FILE_LOCKING"] == nil ? " (on a network file system try HDF5_USE_FILE_LOCKING=FALSE)" : ""
            lines.append(Line(text: "run directory \(runDirectory): cannot write an HDF5 file: \(error)\(hint)", failed: true))
            return lines
        }
        var fs = statvfs()
        if statvfs(runDirectory, &fs) == 0 {
            let free = Double(fs.f_bavail) * Double(fs.f_frsize) / 1_073_741_824
            lines.append(Line(text: String(format: "run directory %@: writable, HDF5 files can be created, %.1f GiB free%@", runDirectory, free,
                                           free < minimumFreeGiB ? String(format: " (expected at least %.0f GiB for checkpoints)", minimumFreeGiB) : ""),
                              failed: free < minimumFreeGiB))
        }
        return lines
    }
}
