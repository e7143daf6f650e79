import CDNNL
import Foundation
import MTLCore

/// oneDNN (Debian's libdnnl 2.x, C API): one CPU engine and one in-order stream for the process,
/// memory objects, and reorders between mtl's plain layouts (NCHW activations, OIHW weights) and
/// the blocked layouts that oneDNN's kernels prefer.
public enum OneDNN {
    struct Context {
        let engine: dnnl_engine_t
        let stream: dnnl_stream_t
    }

    /// Created on first use; nil when oneDNN cannot make a CPU engine (then `available` is false).
    nonisolated(unsafe) static let context: Context? = {
        var engine: dnnl_engine_t?
        guard dnnl_engine_create(&engine, dnnl_cpu, 0) == dnnl_success, let engine else { return nil }
        var stream: dnnl_stream_t?
        guard dnnl_stream_create(&stream, engine, dnnl_stream_default_flags.rawValue) == dnnl_success, let stream else { return nil }
        return Context(engine: engine, stream: stream)
    }()

    public static var available: Bool { context != nil }
    static var engine: dnnl_engine_t { context!.engine }
    static var stream: dnnl_stream_t { context!.stream }

    /// "2.6.3" (the library that is loaded, not the header's).
    public static var version: String {
        let v = dnnl_version()!.pointee
        return "\(v.major).\(v.minor).\(v.patch)"
    }

    /// The OpenMP threads oneDNN's kernels use. Primitives are made for the thread count in force
    /// when they are created, so the convolution plans are keyed by it.
    nonisolated(unsafe) private static var ompThreads = -1
    static func useThreads(_ n: Int) {
        if n != ompThreads {
            _ = mtl_omp_set_num_threads(Int32(n))
            ompThreads = n
        }
    }

    /// Aborts with the oneDNN call and its status: every call below is on shapes that mtl itself
    /// validated, so a failure is a bug or a broken library, not bad input.
    @inline(__always)
    static func check(_ status: dnnl_status_t, _ what: @autoclosure () -> String) {
        if status != dnnl_success {
            fatalError("oneDNN: \(what()) failed with status \(status.rawValue)")
        }
    }

    static func desc(_ dims: [Int], _ tag: dnnl_format_tag_t) -> dnnl_memory_desc_t {
        var md = dnnl_memory_desc_t()
        let d = dims.map(Int64.init)
        check(dnnl_memory_desc_init_by_tag(&md, Int32(d.count), d, dnnl_f32, tag), "memory_desc_init \(dims)")
        return md
    }

    static func equal(_ a: dnnl_memory_desc_t, _ b: dnnl_memory_desc_t) -> Bool {
        var a = a, b = b
        return dnnl_memory_desc_equal(&a, &b) != 0
    }

    /// The implementation a primitive descriptor chose, e.g. "jit:avx2" or "brgconv:avx512_core".
    static func implementation(_ pd: dnnl_primitive_desc_t) -> String {
        var name: UnsafePointer<CChar>?
        check(dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &name), "query impl_info_str")
        return name.map { String(cString: $0) } ?? "?"
    }

    /// The effective instruction set of oneDNN's JIT kernels ("avx512_core_amx", "avx2", ...); capped by
    /// ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA.
    public static var isa: String {
        switch dnnl_get_effective_cpu_isa() {
        case dnnl_cpu_isa_sse41: return "sse41"
        case dnnl_cpu_isa_avx: return "avx"
        case dnnl_cpu_isa_avx2: return "avx2"
        case dnnl_cpu_isa_avx512_mic: return "avx512_mic"
        case dnnl_cpu_isa_avx512_mic_4ops: return "avx512_mic_4ops"
        case dnnl_cpu_isa_avx512_core: return "avx512_core"
        case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni"
        case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16"
        case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx"
        case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni"
        default: return "isa \(dnnl_get_effective_cpu_isa().rawValue)"
        }
    }

    /// How many primitives of each pass and implementation the network's convolutions created,
    /// e.g. ["fwd jit:avx2": 21, "bwd_weights jit:avx2": 21, ...].
    nonisolated(unsafe) public private(set) static var implementationCounts: [String: Int] = [:]
    static func record(_ pass: String, _ implementation: String) {
        let used = beatsBLAS(implementation) ? implementation : "blas (oneDNN offered \(implementation))"
        implementationCounts["\(pass) \(used)", default: 0] += 1
    }
    /// "fwd jit:avx2 ×21, bwd_data jit:avx2 ×20, ..." (sorted), or "none yet".
    public static var implementationSummary: String {
        let parts = implementationCounts.sorted { $0.key < $1.key }.map { "\($0.key) ×\($0.value)" }
        return parts.isEmpty ? "none yet" : parts.joined(separator: ", ")
    }

    /// Whether a oneDNN implementation beats mtl's BLAS path for the same pass. Its reference
    /// implementations ("ref:any") are plain loops, orders of magnitude slower, and never used on a
    /// hot path. Its "gemm" convolutions ("x64:gemm:jit", chosen where no direct JIT kernel fits,
    /// e.g. dilated 3×3 on AVX2) are im2col + GEMM like the BLAS path, but without its padding-aware
    /// regions: measured 2–3× slower on the dilated layers of the bench network (AMD EPYC, 2 threads).
    /// Both leave the pass to the BLAS path.
    static func beatsBLAS(_ implementation: String) -> Bool {
        !(implementation.hasPrefix("ref") || implementation.contains("gemm"))
    }

    static func queryDesc(_ pd: dnnl_primitive_desc_t, _ what: dnnl_query_t) -> dnnl_memory_desc_t {
        dnnl_primitive_desc_query_md(pd, what, 0)!.pointee
    }

    /// Executes `primitive` on the process stream and waits (oneDNN's CPU stream is in-order and
    /// runs on the calling thread's OpenMP team).
    static func execute(_ primitive: dnnl_primitive_t, _ args: [(Int32, Memory)]) {
        let a = args.map { dnnl_exec_arg_t(arg: $0.0, memory: $0.1.handle) }
        check(dnnl_primitive_execute(primitive, stream, Int32(a.count), a), "primitive_execute")
        check(dnnl_stream_wait(stream), "stream_wait")
    }

    /// The primitive of a convolution pass, or nil when the BLAS path will run that pass instead.
    /// Not creating the unused ones matters for memory: oneDNN sizes its one shared scratchpad, at
    /// creation, to the largest primitive alive, and an `x64:gemm:jit` convolution's scratchpad holds
    /// its im2col buffers (223 MB of the ResNet-50 DeepLab bench's heap peak, heaptrack).
    static func primitiveIfFast(_ pd: dnnl_primitive_desc_t, _ implementation: String) -> dnnl_primitive_t? {
        beatsBLAS(implementation) ? makePrimitive(pd) : nil
    }

    static func makePrimitive(_ pd: dnnl_primitive_desc_t) -> dnnl_primitive_t {
        var p: dnnl_primitive_t?
        check(dnnl_primitive_create(&p, pd), "primitive_create")
        return p!
    }

    /// A oneDNN memory object: either its own buffer (allocated by the library in the layout of
    /// `desc`) or a view of a buffer of mtl's, whose pointer is set before each use.
    final class Memory {
        let handle: dnnl_memory_t
        let desc: dnnl_memory_desc_t

        init(_ desc: dnnl_memory_desc_t, owned: Bool) {
            self.desc = desc
            var md = desc
            var m: dnnl_memory_t?
            check(dnnl_memory_create(&m, &md, OneDNN.engine, owned ? mtl_dnnl_memory_allocate() : mtl_dnnl_memory_none()),
                  "memory_create")
            handle = m!
        }

        func bind(_ p: UnsafeRawPointer) {
            check(dnnl_memory_set_data_handle(handle, UnsafeMutableRawPointer(mutating: p)), "memory_set_data_handle")
        }

        deinit { dnnl_memory_destroy(handle) }
    }

    /// A copy between two layouts of one tensor; `accumulate` adds into the destination
    /// (oneDNN's sum post-op), which is how gradients of mtl's parameters are accumulated.
    final class Reorder {
        let primitive: dnnl_primitive_t
        let pd: dnnl_primitive_desc_t

        init(from src: dnnl_memory_desc_t, to dst: dnnl_memory_desc_t, accumulate: Bool = false) {
            var s = src, d = dst
            var attr: dnnl_primitive_attr_t?
            check(dnnl_primitive_attr_create(&attr), "primitive_attr_create")
            defer { dnnl_primitive_attr_destroy(attr) }
            if accumulate {
                var ops: dnnl_post_ops_t?
                check(dnnl_post_ops_create(&ops), "post_ops_create")
                check(dnnl_post_ops_append_sum(ops, 1), "post_ops_append_sum")
                check(dnnl_primitive_attr_set_post_ops(attr, ops), "attr_set_post_ops")
                dnnl_post_ops_destroy(ops)
            }
            var p: dnnl_primitive_desc_t?
            check(dnnl_reorder_primitive_desc_create(&p, &s, OneDNN.engine, &d, OneDNN.engine, attr), "reorder_primitive_desc_create")
            pd = p!
            primitive = makePrimitive(pd)
        }

        func run(_ src: Memory, _ dst: Memory) {
            execute(primitive, [(Int32(MTL_DNNL_ARG_FROM), src), (Int32(MTL_DNNL_ARG_TO), dst)])
        }

        deinit {
            dnnl_primitive_destroy(primitive)
            dnnl_primitive_desc_destroy(pd)
        }
    }

    /// Scratch buffers for the primitives' own layouts of activations and gradients, one per
    /// role and shared by every layer (layers run one after another, as with `ConvWorkspace`),
    /// grown to the largest use: keeping a blocked copy per layer would double the memory of the
    /// activations.
    enum Role: Int, CaseIterable {
        case src, weights, dst, diffDst, diffDstData, diffSrc, diffWeights
    }

    final class Scratch {
        nonisolated(unsafe) static let shared = Scratch()
        private var buffers = [UnsafeMutableRawPointer?](repeating: nil, count: Role.allCases.count)
        private var sizes = [Int](repeating: 0, count: Role.allCases.count)

        func buffer(_ role: Role, bytes: Int) -> UnsafeMutableRawPointer {
            let i = role.rawValue
            if sizes[i] < bytes {
                buffers[i]?.deallocate()
                buffers[i] = UnsafeMutableRawPointer.allocate(byteCount: max(bytes, 64), alignment: 64)
                sizes[i] = bytes
            }
            return buffers[i]!
        }
    }

    /// One tensor argument of a primitive as mtl holds it (`user`: plain layout, mtl's pointer)
    /// and as the primitive wants it (`inner`: the reorder between the two and a buffer, present
    /// only when the layouts differ or the result must be added to mtl's buffer). The inner
    /// buffer is the shared scratch of `role`, or the argument's own when `role` is nil (small
    /// tensors: the bias and its gradient).
    final class Argument {
        let user: Memory
        let inner: Memory?
        let reorder: Reorder?
        let role: Role?
        private let innerBytes: Int

        /// An input of the primitive: mtl's data is reordered into the primitive's layout.
        init(input user: dnnl_memory_desc_t, wanted: dnnl_memory_desc_t, role: Role?) {
            self.user = Memory(user, owned: false)
            self.role = role
            var w = wanted
            innerBytes = dnnl_memory_desc_get_size(&w)
            if OneDNN.equal(user, wanted) {
                inner = nil
                reorder = nil
            } else {
                inner = Memory(wanted, owned: role == nil)
                reorder = Reorder(from: user, to: wanted)
            }
        }

        /// An output of the primitive: written into mtl's buffer (or added to it, `accumulate`).
        init(output user: dnnl_memory_desc_t, produced: dnnl_memory_desc_t, role: Role?, accumulate: Bool = false) {
            self.user = Memory(user, owned: false)
            self.role = role
            var p = produced
            innerBytes = dnnl_memory_desc_get_size(&p)
            if OneDNN.equal(user, produced) && !accumulate {
                inner = nil
                reorder = nil
            } else {
                inner = Memory(produced, owned: role == nil)
                reorder = Reorder(from: produced, to: user, accumulate: accumulate)
            }
        }

        /// The memory the primitive reads or writes.
        var memory: Memory { inner ?? user }
        var desc: dnnl_memory_desc_t { memory.desc }

        private func bindInner() {
            if let role, let inner { inner.bind(Scratch.shared.buffer(role, bytes: innerBytes)) }
        }

        /// Points the user side at `p` and, for an input, brings the data into the primitive's layout.
        func load(_ p: UnsafeRawPointer) {
            user.bind(p)
            bindInner()
            if let reorder, let inner { reorder.run(user, inner) }
        }

        /// For an output, before the primitive runs: points the user side at `p`.
        func bind(_ p: UnsafeRawPointer) {
            user.bind(p)
            bindInner()
        }

        /// For an output: brings the primitive's result into (or adds it to) mtl's buffer.
        func store() {
            if let reorder, let inner { reorder.run(inner, user) }
        }
    }
}
