-- Wireshark dissector for lic-udp, wire protocol version 1 (proto-spec.md §2).
--
-- Install: copy to ~/.local/lib/wireshark/plugins/ (or run
--   wireshark -X lua_script:contrib/wireshark/lic_udp.lua
-- ). UDP port 7301 is decoded as lic-udp; other ports are recognised by the header ("LU", version
-- 1, a known type), or with Decode As… / `tshark -d udp.port==PORT,lic_udp`.
--
-- Every field of every message type is shown. Problems a server would drop the datagram for
-- (bad magic, version, type, length, nonzero padding or flags) are flagged as expert info and
-- named in the `lic_udp.problem` field. Tags and cookies cannot be checked without the keys, so
-- they are shown, not verified. Lease ids are shown as `lic-udp status` and the audit log write
-- them (16 hex digits, `lic_udp.lease`); license ids are the 8 bytes of proto-spec.md §3.

local lic = Proto("lic_udp", "lic-udp floating-license protocol")

local TYPES = {
    [0x01] = "HELLO", [0x02] = "PROOF", [0x03] = "HEARTBEAT", [0x04] = "PROOF_ID",
    [0x81] = "CHALLENGE", [0x82] = "GRANT", [0x83] = "DENY", [0x84] = "ACK",
    [0x85] = "STALE", [0x86] = "UNKNOWN",
}
-- Every type has exactly one valid length.
local LENGTHS = {
    [0x01] = 64, [0x02] = 89, [0x03] = 48, [0x04] = 233,
    [0x81] = 63, [0x82] = 44, [0x83] = 33, [0x84] = 45, [0x85] = 16, [0x86] = 20,
}
local DENY_REASONS = { [1] = "FULL", [2] = "BUSY", [3] = "REVOKED", [4] = "EXPIRED", [5] = "UNAVAILABLE" }
local ACK_STATUS = { [0] = "OK", [1] = "RELEASED", [2] = "REVOKED", [3] = "EXPIRED" }

local f = lic.fields
f.magic = ProtoField.uint16("lic_udp.magic", "Magic", base.HEX)
f.version = ProtoField.uint8("lic_udp.version", "Version")
f.type = ProtoField.uint8("lic_udp.type", "Type", base.HEX, TYPES)
f.type_name = ProtoField.string("lic_udp.type_name", "Type name")
f.direction = ProtoField.string("lic_udp.direction", "Direction")
f.client_nonce = ProtoField.bytes("lic_udp.client_nonce", "Client nonce")
f.license_id = ProtoField.bytes("lic_udp.license_id", "License id")
f.instance_id = ProtoField.bytes("lic_udp.instance_id", "Instance id")
f.cookie = ProtoField.bytes("lic_udp.cookie", "Cookie")
f.cookie_ts = ProtoField.uint32("lic_udp.cookie.ts", "Cookie ts (server seconds)")
f.cookie_kid = ProtoField.uint8("lic_udp.cookie.kid", "Cookie key id")
f.cookie_mac = ProtoField.bytes("lic_udp.cookie.mac", "Cookie MAC")
f.prev_lease_id = ProtoField.uint64("lic_udp.prev_lease_id", "Previous lease id", base.HEX)
f.lease_id = ProtoField.uint64("lic_udp.lease_id", "Lease id", base.HEX)
f.lease = ProtoField.string("lic_udp.lease", "Lease (as status shows it)")
f.epoch = ProtoField.uint32("lic_udp.epoch", "Epoch")
f.seq = ProtoField.uint64("lic_udp.seq", "Sequence number")
f.flags = ProtoField.uint8("lic_udp.flags", "Flags", base.HEX)
f.flag_release = ProtoField.bool("lic_udp.flags.release", "Release", 8, nil, 0x01)
f.server_salt = ProtoField.bytes("lic_udp.server_salt", "Server salt")
f.kdf_m_kib = ProtoField.uint32("lic_udp.kdf.m_kib", "Argon2 memory (KiB)")
f.kdf_t = ProtoField.uint8("lic_udp.kdf.t", "Argon2 passes")
f.kdf_p = ProtoField.uint8("lic_udp.kdf.p", "Argon2 lanes")
f.ttl_ms = ProtoField.uint32("lic_udp.ttl_ms", "Lease TTL (ms)")
f.heartbeat_ms = ProtoField.uint32("lic_udp.heartbeat_ms", "Heartbeat interval (ms)")
f.used = ProtoField.uint16("lic_udp.used", "Seats in use")
f.seats = ProtoField.uint16("lic_udp.seats", "Seats")
f.reason = ProtoField.uint8("lic_udp.reason", "Deny reason", base.DEC, DENY_REASONS)
f.retry_after_ms = ProtoField.uint32("lic_udp.retry_after_ms", "Retry after (ms)")
f.status = ProtoField.uint8("lic_udp.status", "Ack status", base.DEC, ACK_STATUS)
f.user = ProtoField.string("lic_udp.user", "User")
f.host = ProtoField.string("lic_udp.host", "Host")
f.program = ProtoField.string("lic_udp.program", "Program")
f.program_version = ProtoField.string("lic_udp.program_version", "Program version")
f.who = ProtoField.string("lic_udp.who", "Holder (as status shows it)")
f.padding = ProtoField.bytes("lic_udp.padding", "Padding")
f.tag = ProtoField.bytes("lic_udp.tag", "Tag (HMAC-SHA-256-128)")
f.problem = ProtoField.string("lic_udp.problem", "Problem")

local e_magic = ProtoExpert.new("lic_udp.bad_magic", "Not lic-udp: bad magic", expert.group.MALFORMED, expert.severity.ERROR)
local e_version = ProtoExpert.new("lic_udp.bad_version", "Unsupported lic-udp version", expert.group.PROTOCOL, expert.severity.ERROR)
local e_type = ProtoExpert.new("lic_udp.bad_type", "Unknown lic-udp message type", expert.group.MALFORMED, expert.severity.ERROR)
local e_length = ProtoExpert.new("lic_udp.bad_length", "Wrong length for this message type", expert.group.MALFORMED, expert.severity.ERROR)
local e_padding = ProtoExpert.new("lic_udp.bad_padding", "Nonzero padding", expert.group.MALFORMED, expert.severity.ERROR)
local e_flags = ProtoExpert.new("lic_udp.bad_flags", "Unknown heartbeat flags", expert.group.MALFORMED, expert.severity.ERROR)
lic.experts = { e_magic, e_version, e_type, e_length, e_padding, e_flags }

-- Adds a problem: expert info for the GUI, a field for tshark -T fields, and the Info column.
local function problem(tree, pinfo, expert_field, range, text)
    tree:add_tvb_expert_info(expert_field, range, text)
    tree:add(f.problem, range, text)
    pinfo.cols.info:append(" [" .. text .. "]")
end

local function hex16(uint64)
    return uint64:tohex():lower()
end

-- Each body dissector gets the tvb from the body's first byte, and returns an Info summary.
local function lease(tree, r)
    local id = r:le_uint64()
    tree:add_le(f.lease_id, r)
    tree:add(f.lease, r, hex16(id))
    return "lease " .. hex16(id)
end

local function cookie(tree, r)
    local c = tree:add(f.cookie, r)
    c:add_le(f.cookie_ts, r(0, 4))
    c:add(f.cookie_kid, r(4, 1))
    c:add(f.cookie_mac, r(5, 16))
end

local function padding(tree, pinfo, r)
    tree:add(f.padding, r)
    for i = 0, r:len() - 1 do
        if r(i, 1):uint() ~= 0 then
            problem(tree, pinfo, e_padding, r, "nonzero padding")
            return
        end
    end
end

-- A zero-padded UTF-8 field of a PROOF_ID's identity block: its text up to the first NUL.
local function text_field(tree, field, r)
    local s = r:stringz(ENC_UTF_8)
    tree:add(field, r, s)
    return s
end

local function proof_body(t, b)
    t:add(f.license_id, b(0, 8))
    t:add(f.instance_id, b(8, 16))
    t:add(f.client_nonce, b(24, 16))
    cookie(t, b(40, 21))
    t:add_le(f.prev_lease_id, b(61, 8))
    return "license " .. b(0, 8):bytes():tohex():lower()
end

local BODY = {
    [0x01] = function(t, pinfo, b)
        t:add(f.client_nonce, b(0, 16))
        padding(t, pinfo, b(16, 44))
        return ""
    end,
    [0x02] = function(t, pinfo, b)
        return proof_body(t, b)
    end,
    [0x04] = function(t, pinfo, b)
        local s = proof_body(t, b)
        local user = text_field(t, f.user, b(69, 32))
        local host = text_field(t, f.host, b(101, 64))
        local program = text_field(t, f.program, b(165, 32))
        local version = text_field(t, f.program_version, b(197, 16))
        local who = user
        if host ~= "" then who = who .. "@" .. host end
        if program ~= "" then
            who = who .. " (" .. program .. (version ~= "" and (" " .. version) or "") .. ")"
        end
        t:add(f.who, b(69, 144), who)
        return s .. " " .. who
    end,
    [0x03] = function(t, pinfo, b)
        local s = lease(t, b(0, 8))
        t:add_le(f.epoch, b(8, 4))
        t:add_le(f.seq, b(12, 8))
        local fl = t:add(f.flags, b(20, 1))
        fl:add(f.flag_release, b(20, 1))
        local flags = b(20, 1):uint()
        if bit32.band(flags, 0xfe) ~= 0 then
            problem(t, pinfo, e_flags, b(20, 1), string.format("unknown flags 0x%02x", flags))
        end
        padding(t, pinfo, b(21, 7))
        s = s .. " seq " .. b(12, 8):le_uint64():tonumber()
        if bit32.band(flags, 0x01) ~= 0 then
            s = s .. " RELEASE"
        end
        return s
    end,
    [0x81] = function(t, pinfo, b)
        t:add(f.client_nonce, b(0, 16))
        cookie(t, b(16, 21))
        t:add(f.server_salt, b(37, 16))
        t:add_le(f.kdf_m_kib, b(53, 4))
        t:add(f.kdf_t, b(57, 1))
        t:add(f.kdf_p, b(58, 1))
        return ""
    end,
    [0x82] = function(t, pinfo, b)
        local s = lease(t, b(0, 8))
        t:add_le(f.epoch, b(8, 4))
        t:add_le(f.ttl_ms, b(12, 4))
        t:add_le(f.heartbeat_ms, b(16, 4))
        t:add_le(f.used, b(20, 2))
        t:add_le(f.seats, b(22, 2))
        return s .. string.format(" %d/%d seats", b(20, 2):le_uint(), b(22, 2):le_uint())
    end,
    [0x83] = function(t, pinfo, b)
        t:add_le(f.epoch, b(0, 4))
        t:add(f.reason, b(4, 1))
        t:add_le(f.retry_after_ms, b(5, 4))
        t:add_le(f.used, b(9, 2))
        t:add_le(f.seats, b(11, 2))
        return DENY_REASONS[b(4, 1):uint()] or ("reason " .. b(4, 1):uint())
    end,
    [0x84] = function(t, pinfo, b)
        local s = lease(t, b(0, 8))
        t:add_le(f.epoch, b(8, 4))
        t:add_le(f.seq, b(12, 8))
        t:add(f.status, b(20, 1))
        t:add_le(f.ttl_ms, b(21, 4))
        return s .. " " .. (ACK_STATUS[b(20, 1):uint()] or ("status " .. b(20, 1):uint()))
    end,
    [0x85] = function(t, pinfo, b)
        local s = lease(t, b(0, 8))
        t:add_le(f.epoch, b(8, 4))
        return s
    end,
    [0x86] = function(t, pinfo, b)
        t:add(f.client_nonce, b(0, 16))
        return ""
    end,
}

-- Tagged types: the tag is the last 16 bytes.
local TAGGED = { [0x02] = true, [0x03] = true, [0x04] = true, [0x82] = true, [0x83] = true, [0x84] = true }

function lic.dissector(tvb, pinfo, tree)
    local len = tvb:len()
    pinfo.cols.protocol = "LIC-UDP"
    local t = tree:add(lic, tvb(), "lic-udp")
    if len < 4 or tvb(0, 2):uint() ~= 0x4C55 then
        pinfo.cols.info = "lic-udp"
        problem(t, pinfo, e_magic, tvb(0, math.min(len, 2)), "bad magic (not lic-udp)")
        return len
    end
    t:add(f.magic, tvb(0, 2))
    local version = tvb(2, 1):uint()
    t:add(f.version, tvb(2, 1))
    local ty = tvb(3, 1):uint()
    t:add(f.type, tvb(3, 1))
    local name = TYPES[ty] or string.format("type 0x%02x", ty)
    t:add(f.type_name, tvb(3, 1), name)
    local dir = bit32.band(ty, 0x80) ~= 0 and "server to client" or "client to server"
    t:add(f.direction, tvb(3, 1), dir)
    t:append_text(", " .. name)
    pinfo.cols.info = name
    if version ~= 1 then
        problem(t, pinfo, e_version, tvb(2, 1), "unsupported version " .. version)
        return len
    end
    if not TYPES[ty] then
        problem(t, pinfo, e_type, tvb(3, 1), string.format("unknown type 0x%02x", ty))
        return len
    end
    if len ~= LENGTHS[ty] then
        problem(t, pinfo, e_length, tvb(),
            string.format("bad length %d for %s (must be %d)", len, name, LENGTHS[ty]))
        return len
    end
    local summary = BODY[ty](t, pinfo, tvb(4))
    if TAGGED[ty] then
        t:add(f.tag, tvb(len - 16, 16))
    end
    if summary ~= "" then
        pinfo.cols.info:append(" " .. summary)
    end
    return len
end

DissectorTable.get("udp.port"):add(7301, lic)

-- Other ports: only datagrams that look like lic-udp version 1, so stray traffic is left alone.
local function heuristic(tvb, pinfo, tree)
    if tvb:len() < 4 or tvb(0, 2):uint() ~= 0x4C55 or tvb(2, 1):uint() ~= 1 or not TYPES[tvb(3, 1):uint()] then
        return false
    end
    lic.dissector(tvb, pinfo, tree)
    return true
end
lic:register_heuristic("udp", heuristic)
