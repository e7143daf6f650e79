import Foundation
import MTLCore

// The geometry and appearance of one synthetic room, drawn from Philox, and its renderer.
// Frames: world has x right, y DOWN, z forward (the camera at the origin looks along +z
// before yaw/pitch/roll); camera frame is OpenCV's (x right, y down, z forward). A pixel
// (row i, column j) looks along r = ((j + 0.5 - W/2)/f, (i + 0.5 - H/2)/f, 1), so the ray
// parameter t of a hit X = t·r is exactly its z-depth.

struct Vec3 {
    var x, y, z: Double
    init(_ x: Double, _ y: Double, _ z: Double) { self.x = x; self.y = y; self.z = z }
    @inline(__always) static func + (a: Vec3, b: Vec3) -> Vec3 { Vec3(a.x + b.x, a.y + b.y, a.z + b.z) }
    @inline(__always) static func - (a: Vec3, b: Vec3) -> Vec3 { Vec3(a.x - b.x, a.y - b.y, a.z - b.z) }
    @inline(__always) static func * (s: Double, a: Vec3) -> Vec3 { Vec3(s * a.x, s * a.y, s * a.z) }
    @inline(__always) static prefix func - (a: Vec3) -> Vec3 { Vec3(-a.x, -a.y, -a.z) }
    @inline(__always) func dot(_ b: Vec3) -> Double { x * b.x + y * b.y + z * b.z }
    var normalized: Vec3 { (1 / dot(self).squareRoot()) * self }
}

/// Camera-from-world rotation: rows are the camera's x, y, z axes expressed in world coordinates.
struct Rotation {
    let right: Vec3, down: Vec3, forward: Vec3
    /// world -> camera
    @inline(__always) func apply(_ v: Vec3) -> Vec3 { Vec3(right.dot(v), down.dot(v), forward.dot(v)) }
    /// camera -> world
    @inline(__always) func inverse(_ v: Vec3) -> Vec3 { v.x * right + v.y * down + v.z * forward }
}

/// Surface classes of the room. Objects take classes 3..<numClasses.
enum RoomClass {
    static let floor: Int16 = 0, wall: Int16 = 1, ceiling: Int16 = 2, firstObject: Int16 = 3
}

/// Texture patterns; object class k uses kind k % 5, so every class has its own cue
/// (pattern, frequency and base colour together), but none of them alone is decisive.
enum Pattern: Int { case stripes = 0, checker, dots, diagonal, noise, plain }

struct Appearance {
    var base: (Double, Double, Double)
    var pattern: Pattern
    var period: Double     // metres on the surface
    var contrast: Double   // colour = base * (1 - contrast * pattern value)
    var phase: Double
}

/// A room plane: inward unit normal n (camera frame) and n·P for a point P on it.
/// Camera at the origin inside the room means n·P < 0; the ray hits at t = (n·P)/(n·r) when n·r < 0.
struct RoomPlane {
    let normal: Vec3
    let offset: Double
    let cls: Int16
    let surface: Int32
    /// World axes (0 = x, 1 = y, 2 = z) giving the texture coordinates on this plane.
    let axisS: Int, axisT: Int
}

/// A box standing on the floor, rotated about the vertical. Local coordinate a of the camera-frame
/// point t·r is origin[a] + t·(r·axis[a]); the box is |local| <= half componentwise.
struct Box {
    let axes: [Vec3]       // the box's local axes in the camera frame
    let origin: [Double]   // the camera centre in local coordinates
    let half: [Double]
    let cls: Int16
    let surfaceBase: Int32 // + 2·axis + (1 if on the + side)
}

struct SynthScene {
    let focal: Double
    let rotation: Rotation
    let planes: [RoomPlane]
    let boxes: [Box]
    let appearance: [Appearance]   // by class
    let light: Vec3                // unit vector towards the light, camera frame
    let ambient: Double
    let whiteBalance: (Double, Double, Double)
    let noiseSigma: Double         // per-pixel sensor noise, in [0,1] units
    let textureSeed: UInt32

    static let basePalette: [(Double, Double, Double)] = [
        (0.75, 0.25, 0.20), (0.20, 0.45, 0.75), (0.30, 0.62, 0.30), (0.80, 0.68, 0.22),
        (0.55, 0.32, 0.62), (0.35, 0.65, 0.65), (0.85, 0.45, 0.65), (0.45, 0.45, 0.45),
    ]

    static func className(_ c: Int) -> String {
        switch c {
        case 0: return "floor"
        case 1: return "wall"
        case 2: return "ceiling"
        default:
            let k = c - 3
            let kind = ["striped", "checkered", "dotted", "diagonal", "mottled"][k % 5]
            return "object\(k)_\(kind)"
        }
    }

    /// Draws a scene. Every number comes from `rng`, so (seed, sample) fixes the scene.
    init(rng: inout Philox, height: Int, width: Int, numClasses: Int) {
        func uniform(_ lo: Double, _ hi: Double) -> Double { lo + (hi - lo) * Double(rng.uniform()) }
        let deg = Double.pi / 180

        // Camera: the focal length is set by the larger image side, so the half field of view
        // along the diagonal stays below 45° for any aspect ratio (keeps depth in range, see below).
        let fov = uniform(55, 70) * deg
        focal = Double(max(height, width)) / 2 / tan(fov / 2)
        let camHeight = uniform(1.1, 1.6)
        let roomHeight = uniform(2.5, 3.2)
        let back = uniform(4.0, 7.5), left = uniform(1.4, 3.0), right = uniform(1.4, 3.0)
        let yaw = uniform(-20, 20) * deg, pitch = uniform(3, 20) * deg, roll = uniform(-3, 3) * deg

        let forward = Vec3(sin(yaw) * cos(pitch), sin(pitch), cos(yaw) * cos(pitch))
        let flatRight = Vec3(cos(yaw), 0, -sin(yaw))
        let flatDown = Vec3(-sin(pitch) * sin(yaw), cos(pitch), -sin(pitch) * cos(yaw))  // forward × flatRight
        let rotation = Rotation(right: cos(roll) * flatRight + sin(roll) * flatDown,
                            down: -sin(roll) * flatRight + cos(roll) * flatDown,
                            forward: forward)
        self.rotation = rotation

        // Room box: every visible point is at range >= 0.9 m (nearest surface: ceiling at
        // roomHeight - camHeight >= 0.9) and within 45° of the optical axis, so z-depth >= 0.64 m;
        // the farthest corner is at range <= sqrt(3² + 2.1² + 7.5²) = 8.4 m >= z-depth.
        func plane(_ n: Vec3, _ offset: Double, _ cls: Int16, _ id: Int32, _ s: Int, _ t: Int) -> RoomPlane {
            RoomPlane(normal: rotation.apply(n), offset: offset, cls: cls, surface: id, axisS: s, axisT: t)
        }
        let planes = [
            plane(Vec3(0, -1, 0), -camHeight, RoomClass.floor, 0, 0, 2),
            plane(Vec3(0, 1, 0), -(roomHeight - camHeight), RoomClass.ceiling, 1, 0, 2),
            plane(Vec3(0, 0, -1), -back, RoomClass.wall, 2, 0, 1),
            plane(Vec3(1, 0, 0), -left, RoomClass.wall, 3, 2, 1),
            plane(Vec3(-1, 0, 0), -right, RoomClass.wall, 4, 2, 1),
            plane(Vec3(0, 0, 1), -1.0, RoomClass.wall, 5, 0, 1),  // behind the camera: closes the room
        ]
        self.planes = planes

        // 1–4 boxes on the floor, each of a random object class, at least 1.6 m in front and
        // biased towards the camera (u² below) so that objects are not just specks on the back wall.
        let objectClasses = max(1, numClasses - Int(RoomClass.firstObject))
        let boxCount = 1 + rng.int(below: 4)
        var boxes: [Box] = []
        for j in 0..<boxCount {
            let half = [uniform(0.25, 0.6), uniform(0.25, 0.75), uniform(0.2, 0.5)]
            let footprint = (half[0] * half[0] + half[2] * half[2]).squareRoot()
            let cx = uniform(-left + footprint, right - footprint)
            let near = Double(rng.uniform())
            let cz = 1.6 + footprint + (back - 1.6 - 2 * footprint) * near * near
            let centre = Vec3(cx, camHeight - half[1], cz)
            let theta = uniform(-45, 45) * deg
            let worldAxes = [Vec3(cos(theta), 0, -sin(theta)), Vec3(0, 1, 0), Vec3(sin(theta), 0, cos(theta))]
            let cls = RoomClass.firstObject + Int16(rng.int(below: objectClasses))
            boxes.append(Box(axes: worldAxes.map { rotation.apply($0) },
                             origin: worldAxes.map { -centre.dot($0) },
                             half: half, cls: cls, surfaceBase: Int32(6 + 6 * j)))
        }
        self.boxes = boxes

        // Appearance per class: a fixed palette/pattern per class, jittered per scene so that
        // colour alone does not identify the class.
        var appearance: [Appearance] = []
        for c in 0..<numClasses {
            var a: Appearance
            switch c {
            case 0: a = Appearance(base: (0.58, 0.42, 0.30), pattern: .checker, period: uniform(0.35, 0.6),
                                   contrast: uniform(0.2, 0.4), phase: 0)
            case 1: a = Appearance(base: (0.78, 0.76, 0.70), pattern: .noise, period: 0.5,
                                   contrast: uniform(0.08, 0.2), phase: 0)
            case 2: a = Appearance(base: (0.90, 0.90, 0.88), pattern: .plain, period: 1, contrast: 0, phase: 0)
            default:
                let k = c - 3
                a = Appearance(base: SynthScene.basePalette[k % 8], pattern: Pattern(rawValue: k % 5)!,
                               period: (0.14 + 0.08 * Double((k / 5) % 3)) * uniform(0.8, 1.25),
                               contrast: uniform(0.3, 0.55), phase: uniform(0, 2 * Double.pi))
            }
            let jitter = 0.12
            a.base = (min(1, max(0, a.base.0 + uniform(-jitter, jitter))),
                      min(1, max(0, a.base.1 + uniform(-jitter, jitter))),
                      min(1, max(0, a.base.2 + uniform(-jitter, jitter))))
            appearance.append(a)
        }
        self.appearance = appearance

        // A directional light from above and from the camera's side of the room (world y is down,
        // z forward), so that floor, walls and box faces all get distinct shading; camera coordinates.
        light = rotation.apply(Vec3(uniform(-0.7, 0.7), -1, uniform(-1.0, -0.1)).normalized)
        ambient = uniform(0.35, 0.55)
        whiteBalance = (uniform(0.85, 1.15), uniform(0.85, 1.15), uniform(0.85, 1.15))
        noiseSigma = uniform(1, 3) / 255
        textureSeed = rng.nextUInt32()
    }
}

/// Per-sample output planes, allocated once and reused for every sample (bounded memory).
final class SynthRenderer {
    let height: Int, width: Int
    let image: UnsafeMutablePointer<UInt8>      // H·W·3, HWC
    let seg: UnsafeMutablePointer<Int16>
    let depth: UnsafeMutablePointer<Float>
    let normals: UnsafeMutablePointer<Float>    // H·W·3
    let parts: UnsafeMutablePointer<Int16>
    let edges: UnsafeMutablePointer<UInt8>
    let saliency: UnsafeMutablePointer<UInt8>
    let surface: UnsafeMutablePointer<Int32>

    init(height: Int, width: Int) {
        self.height = height
        self.width = width
        let n = height * width
        image = .allocate(capacity: 3 * n)
        seg = .allocate(capacity: n)
        depth = .allocate(capacity: n)
        normals = .allocate(capacity: 3 * n)
        parts = .allocate(capacity: n)
        edges = .allocate(capacity: n)
        saliency = .allocate(capacity: n)
        surface = .allocate(capacity: n)
    }

    deinit {
        image.deallocate(); seg.deallocate(); depth.deallocate(); normals.deallocate()
        parts.deallocate(); edges.deallocate(); saliency.deallocate(); surface.deallocate()
    }

    /// Renders every plane of `scene`. `rowNoise(i)` gives row i's generator for sensor noise,
    /// so rows can be rendered in parallel and still be deterministic.
    func render(_ scene: SynthScene, rowNoise: (Int) -> Philox) {
        let h = height, w = width
        parallelFor(h) { i in
            var noise = rowNoise(i)
            for j in 0..<w {
                renderPixel(scene, row: i, column: j, noise: &noise)
            }
        }
        // Edges: occlusion boundaries and creases, i.e. where the surface hit changes between
        // 4-neighbours (both pixels of the pair are marked). Saliency: object pixels.
        for p in 0..<(h * w) {
            edges[p] = 0
            saliency[p] = seg[p] >= RoomClass.firstObject ? 1 : 0
        }
        for i in 0..<h {
            for j in 0..<w {
                let p = i * w + j
                if j + 1 < w, surface[p] != surface[p + 1] { edges[p] = 1; edges[p + 1] = 1 }
                if i + 1 < h, surface[p] != surface[p + w] { edges[p] = 1; edges[p + w] = 1 }
            }
        }
    }

    @inline(__always)
    private func renderPixel(_ scene: SynthScene, row i: Int, column j: Int, noise: inout Philox) {
        let p = i * width + j
        let ray = Vec3((Double(j) + 0.5 - Double(width) / 2) / scene.focal,
                       (Double(i) + 0.5 - Double(height) / 2) / scene.focal, 1)

        // Nearest hit. The room is convex and contains the camera: exactly one plane is hit first.
        var best = Double.infinity
        var normal = Vec3(0, 0, -1)
        var cls: Int16 = 0, surf: Int32 = -1, part: Int16 = 0
        var texS = 0.0, texT = 0.0
        var hitPlane = -1
        for (k, plane) in scene.planes.enumerated() {
            let denom = plane.normal.dot(ray)
            if denom < -1e-12 {
                let t = plane.offset / denom
                if t > 0 && t < best { best = t; hitPlane = k }
            }
        }
        if hitPlane >= 0 {
            let plane = scene.planes[hitPlane]
            normal = plane.normal
            cls = plane.cls
            surf = plane.surface
            let world = scene.rotation.inverse(best * ray)
            texS = plane.axisS == 0 ? world.x : (plane.axisS == 1 ? world.y : world.z)
            texT = plane.axisT == 0 ? world.x : (plane.axisT == 1 ? world.y : world.z)
        }
        // Boxes: slab test in each box's frame.
        for box in scene.boxes {
            var enter = -Double.infinity, exit = Double.infinity
            var enterAxis = 0
            var enterSign = 1.0
            var miss = false
            for a in 0..<3 {
                let d = box.axes[a].dot(ray)
                let o = box.origin[a], s = box.half[a]
                if abs(d) < 1e-12 {
                    if abs(o) > s { miss = true; break }
                    continue
                }
                let t1 = (-s - o) / d, t2 = (s - o) / d
                let near = min(t1, t2), far = max(t1, t2)
                if near > enter { enter = near; enterAxis = a; enterSign = d > 0 ? -1 : 1 }
                exit = min(exit, far)
            }
            if miss || enter > exit || enter <= 1e-9 || enter >= best { continue }
            best = enter
            normal = enterSign * box.axes[enterAxis]
            cls = box.cls
            surf = box.surfaceBase + Int32(2 * enterAxis) + (enterSign > 0 ? 1 : 0)
            // parts: 1 = top/bottom faces, 2 = faces across the box's x axis, 3 = across its z axis.
            part = enterAxis == 1 ? 1 : (enterAxis == 0 ? 2 : 3)
            let u = (enterAxis + 1) % 3, v = (enterAxis + 2) % 3
            texS = box.origin[u] + enter * box.axes[u].dot(ray)
            texT = box.origin[v] + enter * box.axes[v].dot(ray)
        }

        seg[p] = cls
        parts[p] = part
        surface[p] = surf
        depth[p] = Float(best)
        normals[3 * p] = Float(normal.x)
        normals[3 * p + 1] = Float(normal.y)
        normals[3 * p + 2] = Float(normal.z)

        // Colour: class albedo modulated by its pattern, Lambertian shading from the light,
        // a mild fall-off with depth, white balance, sensor noise.
        let look = scene.appearance[Int(cls)]
        let pattern = patternValue(look, s: texS, t: texT, seed: scene.textureSeed &+ UInt32(cls))
        let albedo = 1 - look.contrast * pattern
        let lambert = max(0, normal.dot(scene.light))
        let shade = (scene.ambient + (1 - scene.ambient) * lambert) * (1.2 - 0.04 * best) * albedo
        for c in 0..<3 {
            let channel = c == 0 ? look.base.0 * scene.whiteBalance.0
                : (c == 1 ? look.base.1 * scene.whiteBalance.1 : look.base.2 * scene.whiteBalance.2)
            // Sum of three uniforms: a cheap, bounded, near-Gaussian with unit variance after scaling.
            let n = (Double(noise.uniform()) + Double(noise.uniform()) + Double(noise.uniform()) - 1.5) * 2
            let value = channel * shade + scene.noiseSigma * n
            image[3 * p + c] = UInt8(max(0, min(255, (value * 255).rounded())))
        }
    }

    /// Pattern value in [0, 1] at surface coordinates (s, t) in metres.
    @inline(__always)
    private func patternValue(_ a: Appearance, s: Double, t: Double, seed: UInt32) -> Double {
        let x = s / a.period, y = t / a.period
        switch a.pattern {
        case .plain:
            return 0
        case .stripes:
            return min(1, max(0, 0.5 + 1.5 * sin(2 * Double.pi * x + a.phase)))
        case .diagonal:
            return min(1, max(0, 0.5 + 1.5 * sin(2 * Double.pi * (x + y) * 0.7071 + a.phase)))
        case .checker:
            return (Int(floor(x)) + Int(floor(y))) & 1 == 0 ? 0 : 1
        case .dots:
            let fx = x - floor(x) - 0.5, fy = y - floor(y) - 0.5
            return fx * fx + fy * fy < 0.09 ? 1 : 0
        case .noise:
            return valueNoise(x + a.phase, y, seed: seed)
        }
    }
}

/// Smooth value noise: a hash of the integer lattice, bilinearly interpolated with a smoothstep.
@inline(__always)
func valueNoise(_ x: Double, _ y: Double, seed: UInt32) -> Double {
    let fx = floor(x), fy = floor(y)
    let ix = Int32(truncatingIfNeeded: Int(fx)), iy = Int32(truncatingIfNeeded: Int(fy))
    let tx = x - fx, ty = y - fy
    let sx = tx * tx * (3 - 2 * tx), sy = ty * ty * (3 - 2 * ty)
    let v00 = latticeHash(ix, iy, seed), v10 = latticeHash(ix &+ 1, iy, seed)
    let v01 = latticeHash(ix, iy &+ 1, seed), v11 = latticeHash(ix &+ 1, iy &+ 1, seed)
    let top = v00 + (v10 - v00) * sx, bottom = v01 + (v11 - v01) * sx
    return top + (bottom - top) * sy
}

/// A 32-bit integer hash (lowbias32) of a lattice point, as a value in [0, 1).
@inline(__always)
func latticeHash(_ x: Int32, _ y: Int32, _ seed: UInt32) -> Double {
    var h = UInt32(bitPattern: x) &* 0x8DA6_B343 ^ UInt32(bitPattern: y) &* 0xD816_3841 ^ seed &* 0xCB1A_B31F
    h ^= h >> 16; h &*= 0x7FEB_352D
    h ^= h >> 15; h &*= 0x846C_A68B
    h ^= h >> 16
    return Double(h) * (1.0 / 4_294_967_296.0)
}
