import Foundation

/// A contiguous Float32 tensor (NCHW for images). Storage is owned and reused:
/// `resize` keeps the allocation when the new shape fits, so layers that call it
/// every step allocate only on the first step (the "arena" of ARCHITECTURE.md).
public final class Tensor: @unchecked Sendable {
    public private(set) var shape: [Int]
    public private(set) var count: Int
    public private(set) var data: UnsafeMutablePointer<Float>
    private var capacity: Int

    /// A zero-filled tensor.
    public init(_ shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        self.shape = shape
        self.count = shape.reduce(1, *)
        self.capacity = max(count, 1)
        self.data = .allocate(capacity: capacity)
        data.initialize(repeating: 0, count: capacity)
    }

    public convenience init(_ shape: [Int], _ values: [Float]) {
        self.init(shape)
        precondition(values.count == count, "Tensor(\(shape)) needs \(count) values, got \(values.count)")
        values.withUnsafeBufferPointer { data.update(from: $0.baseAddress!, count: count) }
    }

    public convenience init(_ shape: [Int], repeating value: Float) {
        self.init(shape)
        fill(value)
    }

    deinit { data.deallocate() }

    /// Changes the shape, reallocating only if the new size exceeds the capacity.
    /// Contents are unspecified afterwards unless the size is unchanged.
    public func resize(_ newShape: [Int]) {
        let n = newShape.reduce(1, *)
        if n > capacity {
            data.deallocate()
            capacity = n
            data = .allocate(capacity: n)
            data.initialize(repeating: 0, count: n)
        }
        shape = newShape
        count = n
    }

    public func zero() { data.update(repeating: 0, count: count) }
    public func fill(_ v: Float) { data.update(repeating: v, count: count) }

    public func copy(from other: Tensor) {
        resize(other.shape)
        data.update(from: other.data, count: count)
    }

    public func clone() -> Tensor {
        let t = Tensor(shape)
        t.data.update(from: data, count: count)
        return t
    }

    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: data, count: count) }
    public var array: [Float] { Array(buffer) }

    public subscript(i: Int) -> Float {
        get { data[i] }
        set { data[i] = newValue }
    }

    public var rank: Int { shape.count }
    /// NCHW accessors (valid for rank-4 tensors).
    public var n: Int { shape[0] }
    public var c: Int { shape[1] }
    public var h: Int { shape[2] }
    public var w: Int { shape[3] }

    /// self += alpha * other
    public func add(_ other: Tensor, alpha: Float = 1) {
        precondition(other.count == count, "add: \(shape) vs \(other.shape)")
        let a = data, b = other.data
        for i in 0..<count { a[i] += alpha * b[i] }
    }

    public func scale(_ s: Float) {
        for i in 0..<count { data[i] *= s }
    }

    /// Sum of squares in double precision.
    /// Σ x² in Double, in eight interleaved partial sums (element i into lane i mod 8), added in a
    /// fixed order: the same bits for any thread count, without a serial chain of dependent adds.
    public func sumOfSquares() -> Double { dot(self) }

    /// Σ xᵢyᵢ in Double, summed like `sumOfSquares`.
    public func dot(_ other: Tensor) -> Double {
        precondition(other.count == count)
        let x = data, y = other.data
        var lo = SIMD4<Double>(repeating: 0), hi = lo
        var i = 0
        while i + 8 <= count {
            let a = SIMD8<Double>(load8(x + i)), b = SIMD8<Double>(load8(y + i))
            lo = lo.addingProduct(a.lowHalf, b.lowHalf)
            hi = hi.addingProduct(a.highHalf, b.highHalf)
            i += 8
        }
        var s = (lo + hi).sum()
        while i < count { s += Double(x[i]) * Double(y[i]); i += 1 }
        return s
    }
}

/// A trainable tensor with its gradient. Names follow PyTorch's state_dict
/// (`encoder.layer1.0.conv1.weight`), so checkpoints map 1:1 onto torch modules.
public final class Parameter: @unchecked Sendable {
    public var name: String
    public let value: Tensor
    public private(set) var grad: Tensor
    /// False for parameters that must not be updated (e.g. a frozen head).
    public var trainable = true

    /// For a parameter no backward ever reaches (a frozen encoder's): not trainable, and its
    /// gradient buffer is freed (`grad` is then empty).
    public func freezeWithoutGradient() {
        trainable = false
        grad = Tensor([0])
    }

    public init(_ name: String, _ value: Tensor) {
        self.name = name
        self.value = value
        self.grad = Tensor(value.shape)
    }

    /// A parameter with a given gradient buffer (e.g. an empty one for a weight that is never trained).
    public init(_ name: String, _ value: Tensor, grad: Tensor) {
        self.name = name
        self.value = value
        self.grad = grad
    }
}

/// A non-trainable named state tensor (BatchNorm running statistics and counters).
public final class Buffer: @unchecked Sendable {
    public var name: String
    public let value: Tensor
    public init(_ name: String, _ value: Tensor) {
        self.name = name
        self.value = value
    }
}

/// Anything with parameters and buffers, named as in PyTorch.
public protocol HasParameters: AnyObject {
    var parameters: [Parameter] { get }
    var buffers: [Buffer] { get }
}

extension HasParameters {
    public var buffers: [Buffer] { [] }
    public func zeroGrad() { for p in parameters { p.grad.zero() } }
    public var parameterCount: Int { parameters.reduce(0) { $0 + $1.value.count } }
}

/// Sums values across data-parallel ranks, in place (identity in a single process).
/// BatchNorm uses it for SyncBN statistics; MTLDist's communicators implement it.
public protocol SumReducer: AnyObject {
    func sumInPlace(_ values: UnsafeMutableBufferPointer<Double>)
}
