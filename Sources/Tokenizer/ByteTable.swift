/// A hash table from byte strings to 32-bit values, looked up with a buffer (no allocation).
///
/// Tokens are keyed by their UTF-8 bytes, never by Swift `String`: strings compare by canonical
/// equivalence ("\u{E0}" == "a\u{300}"), and vocabularies hold both spellings as different tokens.
/// Keys live end to end in one arena; the slots hold entry numbers (open addressing, linear probing).
struct ByteTable: Sendable {
    private var arena: [UInt8] = []
    private var keyStarts: [Int32] = []
    private var keyLengths: [Int32] = []
    private var hashes: [UInt32] = []
    private(set) var values: [Int32] = []
    private var slots: [Int32]
    private var mask: Int

    init(capacity: Int = 16) {
        var size = 16
        while size < capacity * 2 { size <<= 1 }
        slots = [Int32](repeating: -1, count: size)
        mask = size - 1
    }

    var count: Int { values.count }
    var arenaBytes: Int { arena.count }

    /// The value of `key`, or nil.
    @inline(__always)
    func find(_ key: UnsafeBufferPointer<UInt8>) -> Int32? {
        let hash = Self.hash(key)
        var slot = Int(truncatingIfNeeded: hash) & mask
        return arena.withUnsafeBufferPointer { arena in
            while true {
                let entry = Int(slots[slot])
                if entry < 0 { return nil }
                if hashes[entry] == UInt32(truncatingIfNeeded: hash) && Int(keyLengths[entry]) == key.count {
                    let start = Int(keyStarts[entry])
                    if key.count == 0 || memoryEqual(arena.baseAddress! + start, key.baseAddress!, key.count) {
                        return values[entry]
                    }
                }
                slot = (slot + 1) & mask
            }
        }
    }

    func find(_ key: [UInt8]) -> Int32? {
        key.withUnsafeBufferPointer { find($0) }
    }

    /// Adds `key` with `value`; returns the value already there instead when the key is present.
    @discardableResult
    mutating func insert(_ key: UnsafeBufferPointer<UInt8>, value: Int32) -> Int32? {
        if let existing = find(key) { return existing }
        if (values.count + 1) * 2 > slots.count { grow() }
        let hash = Self.hash(key)
        let entry = Int32(values.count)
        keyStarts.append(Int32(arena.count))
        keyLengths.append(Int32(key.count))
        arena.append(contentsOf: key)
        hashes.append(UInt32(truncatingIfNeeded: hash))
        values.append(value)
        place(entry, hash: hash)
        return nil
    }

    @discardableResult
    mutating func insert(_ key: [UInt8], value: Int32) -> Int32? {
        key.withUnsafeBufferPointer { insert($0, value: value) }
    }

    /// Replaces the value of a key that is present.
    mutating func update(_ key: [UInt8], value: Int32) {
        key.withUnsafeBufferPointer { key in
            let hash = Self.hash(key)
            var slot = Int(truncatingIfNeeded: hash) & mask
            while slots[slot] >= 0 {
                let entry = Int(slots[slot])
                if Int(keyLengths[entry]) == key.count
                    && arena[Int(keyStarts[entry])..<Int(keyStarts[entry]) + key.count].elementsEqual(key)
                {
                    values[entry] = value
                    return
                }
                slot = (slot + 1) & mask
            }
        }
    }

    /// The key of entry `entry` (entries are numbered in insertion order).
    func key(at entry: Int) -> ArraySlice<UInt8> {
        let start = Int(keyStarts[entry])
        return arena[start..<start + Int(keyLengths[entry])]
    }

    /// Every key with its value, in insertion order.
    func forEach(_ body: (ArraySlice<UInt8>, Int32) -> Void) {
        for entry in 0..<values.count {
            let start = Int(keyStarts[entry])
            body(arena[start..<start + Int(keyLengths[entry])], values[entry])
        }
    }

    mutating func removeAll() {
        arena.removeAll(keepingCapacity: true)
        keyStarts.removeAll(keepingCapacity: true)
        keyLengths.removeAll(keepingCapacity: true)
        hashes.removeAll(keepingCapacity: true)
        values.removeAll(keepingCapacity: true)
        for i in slots.indices { slots[i] = -1 }
    }

    private mutating func place(_ entry: Int32, hash: UInt64) {
        var slot = Int(truncatingIfNeeded: hash) & mask
        while slots[slot] >= 0 { slot = (slot + 1) & mask }
        slots[slot] = entry
    }

    private mutating func grow() {
        let size = slots.count * 2
        slots = [Int32](repeating: -1, count: size)
        mask = size - 1
        for entry in 0..<values.count {
            let start = Int(keyStarts[entry])
            let hash = arena.withUnsafeBufferPointer {
                Self.hash(UnsafeBufferPointer(rebasing: $0[start..<start + Int(keyLengths[entry])]))
            }
            place(Int32(entry), hash: hash)
        }
    }

    /// A fast multiplicative hash over 8-byte words (keys are short: tokens and words).
    @inline(__always)
    static func hash(_ key: UnsafeBufferPointer<UInt8>) -> UInt64 {
        var h: UInt64 = 0x9E37_79B9_7F4A_7C15 ^ UInt64(key.count)
        guard let base = key.baseAddress else { return h &* 0xFF51_AFD7_ED55_8CCD }
        let raw = UnsafeRawPointer(base)
        var i = 0
        while i + 8 <= key.count {
            h = (h ^ raw.loadUnaligned(fromByteOffset: i, as: UInt64.self)) &* 0xFF51_AFD7_ED55_8CCD
            h ^= h >> 29
            i += 8
        }
        if i < key.count {
            var tail: UInt64 = 0
            var shift: UInt64 = 0
            while i < key.count {
                tail |= UInt64(base[i]) << shift
                shift += 8
                i += 1
            }
            h = (h ^ tail) &* 0xC4CE_B9FE_1A85_EC53
        }
        // MurmurHash3's finalizer: the low bits (the slot) depend on every input bit.
        h ^= h >> 33
        h = h &* 0xFF51_AFD7_ED55_8CCD
        h ^= h >> 33
        return h
    }
}

@inline(__always)
func memoryEqual(_ a: UnsafePointer<UInt8>, _ b: UnsafePointer<UInt8>, _ count: Int) -> Bool {
    var i = 0
    while i + 8 <= count {
        if UnsafeRawPointer(a).loadUnaligned(fromByteOffset: i, as: UInt64.self)
            != UnsafeRawPointer(b).loadUnaligned(fromByteOffset: i, as: UInt64.self)
        {
            return false
        }
        i += 8
    }
    while i < count {
        if a[i] != b[i] { return false }
        i += 1
    }
    return true
}
