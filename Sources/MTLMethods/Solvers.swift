import Foundation

// Small dense solvers for T×T problems (T is the number of tasks, 2..~10). Everything is
// Double, row-major, deterministic (fixed loop orders, no randomness, no threads).

// MARK: - Adam on a few scalars (UW / IAL s_t, GradNorm w_t, IMTL-L s_t)

/// PyTorch's Adam (bias-corrected, no weight decay) on a small vector of scalars.
struct ScalarAdam {
    var lr: Double
    let beta1 = 0.9, beta2 = 0.999, eps = 1e-8
    var m: [Double]
    var v: [Double]
    var t = 0

    init(lr: Double, count: Int) {
        self.lr = lr
        m = [Double](repeating: 0, count: count)
        v = [Double](repeating: 0, count: count)
    }

    mutating func step(_ x: inout [Double], grad: [Double]) {
        t += 1
        let c1 = 1 - pow(beta1, Double(t)), c2 = 1 - pow(beta2, Double(t))
        for i in x.indices {
            m[i] = beta1 * m[i] + (1 - beta1) * grad[i]
            v[i] = beta2 * v[i] + (1 - beta2) * grad[i] * grad[i]
            x[i] -= lr * (m[i] / c1) / ((v[i] / c2).squareRoot() + eps)
        }
    }

    func state(_ prefix: String) -> [String: [Double]] {
        ["\(prefix).m": m, "\(prefix).v": v, "\(prefix).t": [Double(t)]]
    }

    static func keys(_ prefix: String) -> [String] { ["\(prefix).m", "\(prefix).v", "\(prefix).t"] }

    mutating func load(_ state: [String: [Double]], _ prefix: String, method: String) throws {
        m = try stateArray(state, method, "\(prefix).m", count: m.count)
        v = try stateArray(state, method, "\(prefix).v", count: v.count)
        t = Int(try stateArray(state, method, "\(prefix).t", count: 1)[0])
    }
}

// MARK: - linear algebra

enum Dense {
    /// y = A x for a row-major n×n matrix.
    static func matVec(_ A: [Double], _ x: [Double]) -> [Double] {
        let n = x.count
        var y = [Double](repeating: 0, count: n)
        for i in 0..<n {
            var s = 0.0
            for j in 0..<n { s += A[i * n + j] * x[j] }
            y[i] = s
        }
        return y
    }

    static func dot(_ a: [Double], _ b: [Double]) -> Double {
        var s = 0.0
        for i in a.indices { s += a[i] * b[i] }
        return s
    }

    /// xᵀ A x.
    static func quad(_ A: [Double], _ x: [Double]) -> Double { dot(x, matVec(A, x)) }

    /// Solves A x = b (n×n, row-major) by Gaussian elimination with partial pivoting.
    /// Returns nil when a pivot is below `relTol` times the largest entry of A (singular).
    static func solve(_ A: [Double], _ b: [Double], relTol: Double = 1e-13) -> [Double]? {
        let n = b.count
        var a = A, x = b
        let scale = A.reduce(0) { max($0, abs($1)) }
        if scale == 0 { return nil }
        for col in 0..<n {
            var piv = col
            for r in (col + 1)..<max(n, col + 1) where abs(a[r * n + col]) > abs(a[piv * n + col]) { piv = r }
            if abs(a[piv * n + col]) <= relTol * scale { return nil }
            if piv != col {
                for c in 0..<n { a.swapAt(col * n + c, piv * n + c) }
                x.swapAt(col, piv)
            }
            let d = a[col * n + col]
            for r in (col + 1)..<max(n, col + 1) {
                let f = a[r * n + col] / d
                if f == 0 { continue }
                for c in col..<n { a[r * n + c] -= f * a[col * n + c] }
                x[r] -= f * x[col]
            }
        }
        for r in stride(from: n - 1, through: 0, by: -1) {
            var s = x[r]
            for c in (r + 1)..<max(n, r + 1) { s -= a[r * n + c] * x[c] }
            x[r] = s / a[r * n + r]
        }
        return x
    }

    /// Eigen-decomposition of a symmetric n×n matrix by cyclic Jacobi rotations.
    /// Returns the eigenvalues (in the order the diagonal ends up in, unsorted) and the
    /// eigenvectors as the COLUMNS of a row-major n×n matrix V (A = V diag(λ) Vᵀ).
    /// Jacobi is slow for big n but exact to working precision and branch-simple for the
    /// T×T Gram matrices used here; it also gives orthonormal vectors for repeated eigenvalues.
    static func symmetricEigen(_ A: [Double], _ n: Int) -> (values: [Double], vectors: [Double]) {
        var a = A
        // Symmetrise: the Gram arrives symmetric, but be robust to a last-bit difference.
        for i in 0..<n { for j in (i + 1)..<max(n, i + 1) {
            let s = 0.5 * (a[i * n + j] + a[j * n + i]); a[i * n + j] = s; a[j * n + i] = s
        } }
        var v = [Double](repeating: 0, count: n * n)
        for i in 0..<n { v[i * n + i] = 1 }
        var total = 0.0
        for x in a { total += x * x }
        for _ in 0..<100 {
            var off = 0.0
            for i in 0..<n { for j in (i + 1)..<max(n, i + 1) { off += a[i * n + j] * a[i * n + j] } }
            if off == 0 || off <= 1e-32 * total { break }
            for p in 0..<n {
                for q in (p + 1)..<max(n, p + 1) {
                    let apq = a[p * n + q]
                    if apq == 0 { continue }
                    let theta = (a[q * n + q] - a[p * n + p]) / (2 * apq)
                    // t = tan(rotation angle), the smaller root of t² + 2θt − 1 = 0.
                    let t: Double = abs(theta) > 1e150
                        ? 1 / (2 * theta)
                        : (theta >= 0 ? 1 : -1) / (abs(theta) + (theta * theta + 1).squareRoot())
                    let c = 1 / (t * t + 1).squareRoot(), s = t * c
                    for k in 0..<n {  // columns p, q of A·J
                        let akp = a[k * n + p], akq = a[k * n + q]
                        a[k * n + p] = c * akp - s * akq
                        a[k * n + q] = s * akp + c * akq
                    }
                    for k in 0..<n {  // rows p, q of Jᵀ·(A·J)
                        let apk = a[p * n + k], aqk = a[q * n + k]
                        a[p * n + k] = c * apk - s * aqk
                        a[q * n + k] = s * apk + c * aqk
                    }
                    a[p * n + q] = 0; a[q * n + p] = 0  // exactly zero by construction
                    for k in 0..<n {  // V ← V·J
                        let vkp = v[k * n + p], vkq = v[k * n + q]
                        v[k * n + p] = c * vkp - s * vkq
                        v[k * n + q] = s * vkp + c * vkq
                    }
                }
            }
        }
        return ((0..<n).map { a[$0 * n + $0] }, v)
    }
}

// MARK: - simplex

enum Simplex {
    /// Exact Euclidean projection onto {x ≥ 0, Σx = 1} (sort-based, Held et al. / Duchi et al.).
    static func project(_ v: [Double]) -> [Double] {
        let u = v.sorted(by: >)
        var cumulative = 0.0, theta = 0.0
        for (i, ui) in u.enumerated() {
            cumulative += ui
            let t = (cumulative - 1) / Double(i + 1)
            if ui - t > 0 { theta = t }
        }
        return v.map { max($0 - theta, 0) }
    }

    /// Projected-gradient KKT residual: max_t |x_t − P(x − ∇f(x))_t|; zero exactly at a minimiser.
    static func residual(_ x: [Double], _ g: [Double]) -> Double {
        let p = project(zip(x, g).map { $0 - $1 })
        var r = 0.0
        for i in x.indices { r = max(r, abs(x[i] - p[i])) }
        return r
    }

    /// Minimises a smooth convex f on the simplex: accelerated projected gradient (FISTA with
    /// backtracking and function-value restart) until the KKT residual is below `tol`, then
    /// Newton polishing on the active face (equality-constrained Newton, quadratic convergence)
    /// when a Hessian is given. Returns the minimiser and the final residual.
    static func minimize(n: Int, start: [Double], tol: Double = 1e-13, maxIter: Int = 50_000,
                         value f: ([Double]) -> Double, gradient grad: ([Double]) -> [Double],
                         hessian: (([Double]) -> [Double])? = nil) -> (x: [Double], residual: Double) {
        var x = project(start)
        var fx = f(x)
        for round in 0..<4 {
            // Accelerated projected gradient.
            var y = x, tk = 1.0, L = 1.0
            var restartsInARow = 0
            for _ in 0..<maxIter {
                let gy = grad(y), fy = f(y)
                var xn = x, fxn = fx
                while true {
                    xn = project((0..<n).map { y[$0] - gy[$0] / L })
                    fxn = f(xn)
                    var lin = 0.0, sq = 0.0
                    for i in 0..<n { let d = xn[i] - y[i]; lin += gy[i] * d; sq += d * d }
                    if fxn <= fy + lin + 0.5 * L * sq + 1e-15 * max(1, abs(fy)) || L > 1e30 { break }
                    L *= 2
                }
                if fxn > fx {  // momentum overshot: restart from x
                    restartsInARow += 1
                    if restartsInARow > 2 { break }  // rounding-level: cannot decrease further
                    y = x; tk = 1
                    continue
                }
                restartsInARow = 0
                let tn = (1 + (1 + 4 * tk * tk).squareRoot()) / 2
                let mom = (tk - 1) / tn
                y = (0..<n).map { xn[$0] + mom * (xn[$0] - x[$0]) }
                x = xn; fx = fxn; tk = tn
                if residual(x, grad(x)) < tol { break }
            }
            guard let hessian else { break }
            // Newton on the face {x_S free, Σ x_S = 1}, S = current support.
            let support = (0..<n).filter { x[$0] > 0 }
            let m = support.count
            if m >= 2 {
                for _ in 0..<50 {
                    let g = grad(x), H = hessian(x)
                    // KKT system [[H_SS, 1], [1ᵀ, 0]] [Δ; ν] = [−g_S; 0], with a tiny ridge for
                    // singular H (rank-deficient Gram: the minimiser is then not unique).
                    var trace = 0.0
                    for i in support { trace += abs(H[i * n + i]) }
                    var K = [Double](repeating: 0, count: (m + 1) * (m + 1))
                    var rhs = [Double](repeating: 0, count: m + 1)
                    for (a, i) in support.enumerated() {
                        for (b, j) in support.enumerated() { K[a * (m + 1) + b] = H[i * n + j] }
                        K[a * (m + 1) + a] += 1e-14 * max(trace, 1e-300)
                        K[a * (m + 1) + m] = 1
                        K[m * (m + 1) + a] = 1
                        rhs[a] = -g[i]
                    }
                    guard let sol = Dense.solve(K, rhs, relTol: 1e-300) else { break }
                    var slope = 0.0, size = 0.0
                    for (a, i) in support.enumerated() { slope += g[i] * sol[a]; size = max(size, abs(sol[a])) }
                    if size < 1e-16 || slope >= 0 { break }
                    var step = 1.0, accepted = false
                    while step > 1e-12 {
                        var xt = x
                        var feasible = true
                        for (a, i) in support.enumerated() {
                            xt[i] = x[i] + step * sol[a]
                            if xt[i] <= 0 { feasible = false }
                        }
                        if feasible {
                            let ft = f(xt)
                            if ft <= fx + 1e-4 * step * slope {
                                // Renormalise the sum (it drifts by rounding only).
                                let s = xt.reduce(0, +)
                                x = xt.map { $0 / s }; fx = f(x); accepted = true
                                break
                            }
                        }
                        step *= 0.5
                    }
                    if !accepted { break }
                }
            }
            if residual(x, grad(x)) < tol || round == 3 { break }
        }
        return (x, residual(x, grad(x)))
    }
}

// MARK: - min-norm point in the convex hull (MGDA)

enum MinNorm {
    /// min over γ ∈ [0,1] of ||γ v1 + (1−γ) v2||² from the three inner products, with the
    /// reference's clamps (0.999 / 0.001 at the ends). Returns (γ, cost).
    static func twoPoint(_ v1v1: Double, _ v1v2: Double, _ v2v2: Double) -> (gamma: Double, cost: Double) {
        if v1v2 >= v1v1 { return (0.999, v1v1) }
        if v1v2 >= v2v2 { return (0.001, v2v2) }
        let denom = v1v1 + v2v2 - 2 * v1v2
        if denom <= 0 { return (0.5, v2v2) }  // v1 == v2 up to rounding
        let gamma = -(v1v2 - v2v2) / denom
        return (gamma, v2v2 + gamma * (v1v2 - v2v2))
    }

    /// argmin_{α ∈ Δ} αᵀ K α by the reference's Frank–Wolfe (METHODS.md §6): start from the
    /// best pair, then line-search towards the vertex with the smallest (Kα)_t until the L1
    /// change of α is below `stop` (1e-5), the Frank–Wolfe gap is zero, or after 250 iterations.
    static func frankWolfe(_ K: [Double], _ T: Int, maxIter: Int = 250, stop: Double = 1e-5) -> [Double] {
        if T == 1 { return [1] }
        var best = (i: 0, j: 1, gamma: 0.0, cost: Double.infinity)
        for i in 0..<T {
            for j in (i + 1)..<T {
                let (g, c) = twoPoint(K[i * T + i], K[i * T + j], K[j * T + j])
                if c < best.cost { best = (i, j, g, c) }
            }
        }
        var alpha = [Double](repeating: 0, count: T)
        alpha[best.i] = best.gamma
        alpha[best.j] = 1 - best.gamma
        if T < 3 { return alpha }
        for _ in 0..<maxIter {
            let Ka = Dense.matVec(K, alpha)
            var tStar = 0
            for t in 1..<T where Ka[t] < Ka[tStar] { tStar = t }
            let v1v1 = Dense.dot(alpha, Ka), v1v2 = Ka[tStar], v2v2 = K[tStar * T + tStar]
            // Zero Frank–Wolfe gap (min_t (Kα)_t ≥ αᵀKα): α is optimal. The reference would take
            // its clamped γ = 0.999 step here and jitter by ~1e-3 until the 250-iteration cap.
            if v1v2 >= v1v1 { break }
            let (nc, _) = twoPoint(v1v1, v1v2, v2v2)
            var next = alpha.map { nc * $0 }
            next[tStar] += 1 - nc
            var change = 0.0
            for t in 0..<T { change += abs(next[t] - alpha[t]) }
            if change < stop { break }
            alpha = next
        }
        // Frank–Wolfe zigzags near a face of the simplex and can stop (change < stop) with a KKT
        // residual of several percent; finish on the same convex problem with the accelerated
        // projected-gradient solver, started from the FW point, so the result is the true min-norm point.
        let polished = Simplex.minimize(n: T, start: alpha,
                                        value: { a in Dense.dot(a, Dense.matVec(K, a)) },
                                        gradient: { a in Dense.matVec(K, a).map { 2 * $0 } },
                                        hessian: { _ in K.map { 2 * $0 } })
        return polished.x
    }
}
