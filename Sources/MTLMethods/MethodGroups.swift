import MTLCore

/// Other spellings of a method name that makeMethod accepts.
let methodAliases: [String: String] = ["auto-lambda": "autol"]

/// The `method.<group>` names whose hyperparameters `method` reads: its own name (and alias), and
/// for the IMTL variants also the shared `imtl` group.
public func methodParameterGroups(_ method: String) -> [String] {
    let key = methodAliases[method.lowercased()] ?? method.lowercased()
    var groups = [key]
    for (alias, target) in methodAliases where target == key { groups.append(alias) }
    if key.hasPrefix("imtl"), key != "imtl" { groups.append("imtl") }
    return groups
}

/// Every `method.<group>` in a config must belong to the chosen method: a hyperparameter of another
/// method, or a misspelt group, would otherwise be silently ignored. Throws a message naming the
/// group, the chosen method and the nearest valid group (without the file: the caller adds it).
public func checkMethodGroup(_ group: String, method: String) throws {
    let own = methodParameterGroups(method)
    if own.contains(group) { return }
    let ownList = own.map { "method.\($0)" }.joined(separator: " or ")
    let allGroups = methodNames + Array(methodAliases.keys)
    if allGroups.contains(group) {
        throw MTLError("method.\(group): hyperparameters of method \(group), but method.name is \(method) "
                       + "(its hyperparameters go under \(ownList); did you mean method.name=\(group)?)")
    }
    let hint = nearest(group.lowercased(), in: own) ?? nearest(group.lowercased(), in: allGroups)
    throw MTLError("method.\(group): no method is called '\(group)'"
                   + (hint.map { " (did you mean 'method.\($0)'?)" } ?? "")
                   + "; method.name is \(method), whose hyperparameters go under \(ownList)")
}

/// The chosen method's hyperparameters gathered from all of its groups (bare keys, for makeMethod).
/// A key set in two of its groups (`method.imtl.lr` and `method.imtl-l.lr`) is an error.
public func methodParameters(name: String, groups: [String: [String: String]]) throws -> [String: String] {
    var merged: [String: String] = [:]
    var from: [String: String] = [:]
    for group in methodParameterGroups(name) {
        for (k, v) in groups[group] ?? [:] {
            if let other = from[k] {
                throw MTLError("method.\(group).\(k): also set as method.\(other).\(k); set it once")
            }
            merged[k] = v
            from[k] = group
        }
    }
    return merged
}
