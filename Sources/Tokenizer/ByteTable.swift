/// A hash table from byte strings to 32-bit values, looked up with a buffer (no allocation).
///
/// Tokens are keyed by their UTF-8 bytes, never by Swift `String`: strings compare by canonical
/// equivalence ("\u{E0}" == "a\u{300}"), and vocabularies hold both spellings as different tokens.
/// Keys live end to end in one arena; each slot of the open-addressed table (linear probing)
/// holds a key's place in the arena, its hash and its value, so that a lookup reads two arrays.
struct ByteTable: Sendable {
    struct Slot {
        var start: Int32
        /// -1: an empty slot.
        var length: Int32
        var hash: UInt32
        var value: Int32
        static let empty = Slot(start: 0, length: -1, hash: 0, value: 0)
    }

    private var arena: [UInt8] = []
    private var slots: [Slot]
    /// The slot of each entry, in insertion order.
    private var order: [Int32] = []

    init(capacity: Int = 16) {
        var size = 16
        while size < capacity * 2 { size <<= 1 }
        slots = [Slot](repeating: .empty, count: size)
    }

    var count: Int { order.count }

    /// The value of `key`, or nil.
    @inline(__always)
    func find(_ key: UnsafeBufferPointer<UInt8>) -> Int32? {
        withView { $0.find(key) }
    }

    /// The table's arrays as buffers for the span of `body` (lookups in a loop then take no
    /// reference counting).
    @inline(__always)
    func withView<R>(_ body: (View) -> R) -> R {
        slots.withUnsafeBufferPointer { slots in arena.withUnsafeBufferPointer { arena in body(View(slots: slots, arena: arena)) } }
    }

    struct View {
        let slots: UnsafeBufferPointer<Slot>
        let arena: UnsafeBufferPointer<UInt8>

        @inline(__always)
        func find(_ key: UnsafeBufferPointer<UInt8>) -> Int32? {
            let hash = ByteTable.hash(key)
            let hash32 = UInt32(truncatingIfNeeded: hash)
            let mask = slots.count - 1
            var i = Int(truncatingIfNeeded: hash) & mask
            while true {
                let slot = slots[i]
                if slot.length < 0 { return nil }
                if slot.hash == hash32 && Int(slot.length) == key.count
                    && (key.count == 0 || memoryEqual(arena.baseAddress! + Int(slot.start), key.baseAddress!, key.count))
                {
                    return slot.value
                }
                i = (i + 1) & mask
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
        if (order.count + 1) * 2 > slots.count { grow() }
        let slot = Slot(start: Int32(arena.count), length: Int32(key.count), hash: UInt32(truncatingIfNeeded: Self.hash(key)), value: value)
        arena.append(contentsOf: key)
        order.append(Int32(place(slot, hash: Self.hash(key))))
        return nil
    }

    @discardableResult
    mutating func insert(_ key: [UInt8], value: Int32) -> Int32? {
        key.withUnsafeBufferPointer { insert($0, value: value) }
    }

    /// The key of entry `entry` (entries are numbered in insertion order).
    func key(at entry: Int) -> ArraySlice<UInt8> {
        let slot = slots[Int(order[entry])]
        return arena[Int(slot.start)..<Int(slot.start) + Int(slot.length)]
    }

    /// Every key with its value, in insertion order.
    func forEach(_ body: (ArraySlice<UInt8>, Int32) -> Void) {
        for entry in order.indices { body(key(at: entry), slots[Int(order[entry])].value) }
    }

    mutating func removeAll() {
        arena.removeAll(keepingCapacity: true)
        order.removeAll(keepingCapacity: true)
        for i in slots.indices { slots[i] = .empty }
    }

    private mutating func place(_ slot: Slot, hash: UInt64) -> Int {
        let mask = slots.count - 1
        var i = Int(truncatingIfNeeded: hash) & mask
        while slots[i].length >= 0 { i = (i + 1) & mask }
        slots[i] = slot
        return i
    }

    private mutating func grow() {
        let old = order.map { slots[Int($0)] }
        slots = [Slot](repeating: .empty, count: slots.count * 2)
        for (entry, slot) in old.enumerated() {
            let hash = arena.withUnsafeBufferPointer {
                Self.hash(UnsafeBufferPointer(rebasing: $0[Int(slot.start)..<Int(slot.start) + Int(slot.length)]))
            }
            order[entry] = Int32(place(slot, hash: hash))
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
