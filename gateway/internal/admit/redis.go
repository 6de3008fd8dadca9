package admit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/maas-platform/maas/gateway/internal/panics"
)

// Redis layout, per subject (scope s, id i), under Options.KeyPrefix:
//
//	s:s:i  hash: r, rt (RPM tokens, their time in ms), t, tt (TPM tokens, time), m, u (month
//	       YYYYMM and the tokens charged to its budget), x (expiry set until, ms)
//	c:s:i  sorted set of concurrency leases: ticket id scored by lease expiry (ms)
//
// and per gateway process g and period b (b = the gateway's clock / ReservationTTL):
//
//	r:g:b  hash of the records of the admissions made in the period, by ticket id: the
//	       budget mask while admitted, "x" once undone (a tombstone). It expires 2 periods
//	       after its period began, so a record lives between 1 and 2 ReservationTTL.
//
// Records of one gateway share a hash so that a batch reads and writes them in one call each
// (HMGET, HSET or HDEL) instead of one key per admission.
//
// One hash per subject keeps a script at two Redis calls per subject (HMGET, HSET): on this
// machine kind every call inside a script costs about 2 µs. The hash lives for a day after
// its last use (x saves a PEXPIRE per request; it is refreshed when less than 12 h remain).
// A budget counter that expires with it is seeded again from the ledger, which is complete
// by then. Buckets have the local tier's semantics: burst = the per-minute limit, continuous
// refill at limit/60000 per ms.
//
// The record makes every step idempotent, so each admission is charged and settled exactly
// once whatever the network does: an admission sent again with the same id returns the first
// decision without charging; a settlement deletes the record and corrects the charges only if
// it was there; an undo (the gateway gave up waiting and decided locally) refunds what the
// admission charged if it ran, and leaves a tombstone that refuses it if it runs later.
const luaCommon = `
local function refill(tok, ts, limit, now)
  if tok == nil then return limit end
  if ts ~= nil and now > ts then tok = tok + (now - ts) * limit / 60000 end
  if tok > limit then tok = limit end
  return tok
end
local servernow
local function clock(arg)
  local now = tonumber(arg)
  if now ~= 0 then return now end
  if servernow == nil then
    local t = redis.call('TIME')
    servernow = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return servernow
end
local day, halfday = 86400000, 43200000
-- members names the k concurrency slots of admission tid: the id itself for one (a request),
-- id:1..id:k for a leased block.
local function members(tid, k)
  if k == 1 then return {tid} end
  local m = {}
  for j = 1, k do m[j] = tid .. ':' .. j end
  return m
end
`

// admitScript decides a batch of admissions, in order, atomically. For each it checks every
// limit of every subject (in the local tier's order: concurrency, budget, requests, tokens),
// then writes the admission's record and charges them all. An admission whose record exists
// already charges nothing: it returns the first decision, or {4} if it was undone.
//
// Every redis.call costs a few µs, far more than the Lua around it, so the script makes as
// few as it can: each subject's hash is read once per batch (HMGET) and written once (HSET),
// however many admissions of the batch charge it; its leases are added in one ZADD; the
// lease set is pruned only when it looks full, and its expiry refreshed only when it runs
// short (cx in the hash); the records of the batch are read in one HMGET and written in one
// HSET.
// Admissions of the same tenant, frequent under load, then cost about one call each.
//
// KEYS: per admission, 2 per subject (hash, leases), then its records hash.
// ARGV: the number of admissions, then per admission: its number of subjects, now ms (0 =
// Redis server time), reserved tokens, lease ms, ticket id, month YYYYMM, records hash expiry
// (unix ms), requests to charge (1; a lease's block), concurrency slots to take (1; a lease's
// block, 0 = none); then 6 per subject: rpm, tpm, max concurrent, budget, tpm charge, budget seed (-1 = report a
// missing counter, -2 = skip the budget when missing).
// Returns one reply per admission: {0, budget mask} admitted; {1, subject, reason, retry ms,
// used} refused; {3, subject...} budget counters missing: seed them and send it again; {4}
// undone already.
const admitLua = `
local S, order, Z, zorder = {}, {}, {}, {}
local R, rorder = {}, {}
do -- read every admission's record: one HMGET per records hash
  local ki, ai = 1, 2
  for j = 1, tonumber(ARGV[1]) do
    local ns = tonumber(ARGV[ai])
    local rk = KEYS[ki + ns*2]
    local r = R[rk]
    if r == nil then
      r = {ids = {}, got = {}, put = {}, exp = ARGV[ai+6]}
      R[rk] = r
      rorder[#rorder + 1] = rk
    end
    r.ids[#r.ids + 1] = ARGV[ai+4]
    ki = ki + ns * 2 + 1
    ai = ai + 9 + ns * 6
  end
  for _, rk in ipairs(rorder) do
    local r = R[rk]
    local v = redis.call('HMGET', rk, unpack(r.ids))
    for i, id in ipairs(r.ids) do r.got[id] = v[i] end
  end
end
local function subject(hk)
  local s = S[hk]
  if s == nil then
    local h = redis.call('HMGET', hk, 'r', 'rt', 't', 'tt', 'm', 'u', 'x', 'cx')
    s = {r = tonumber(h[1]), rt = tonumber(h[2]), t = tonumber(h[3]), tt = tonumber(h[4]), m = h[5],
      u = tonumber(h[6]), x = tonumber(h[7]), cx = tonumber(h[8])}
    S[hk] = s
    order[#order + 1] = hk
  end
  return s
end
local function leases(zk)
  local z = Z[zk]
  if z == nil then
    z = {n = redis.call('ZCARD', zk), add = {}}
    Z[zk] = z
    zorder[#zorder + 1] = zk
  end
  return z
end
local out = {}
local ki, ai = 1, 2
for j = 1, tonumber(ARGV[1]) do
  local ns = tonumber(ARGV[ai])
  local now = clock(ARGV[ai+1])
  local n = tonumber(ARGV[ai+2])
  local lease = tonumber(ARGV[ai+3])
  local tid = ARGV[ai+4]
  local mon = ARGV[ai+5]
  local q, k = tonumber(ARGV[ai+7]), tonumber(ARGV[ai+8])
  local rec = R[KEYS[ki + ns*2]]
  local prev = rec.got[tid]
  local res, missing, mask, plan = nil, {}, 0, {}
  if prev then
    if prev == 'x' then res = {4} else res = {0, tonumber(prev)} end
    ns = 0 -- decided already: check nothing, charge nothing
  end
  for i = 1, ns do
    local a = ai + 8 + (i - 1) * 6
    local rpm, tpm, cc, bud = tonumber(ARGV[a+1]), tonumber(ARGV[a+2]), tonumber(ARGV[a+3]), tonumber(ARGV[a+4])
    local charge = tonumber(ARGV[a+5])
    local zk = KEYS[ki + i*2 - 1]
    local s = subject(KEYS[ki + i*2 - 2])
    local p = {s = s}
    if cc > 0 and k > 0 then
      local z = leases(zk)
      if z.n + k > cc and not z.pruned then
        redis.call('ZREMRANGEBYSCORE', zk, '-inf', now)
        z.n = redis.call('ZCARD', zk) + #z.add / 2
        z.pruned = true
      end
      if z.n + k > cc then res = {1, i, 2, 1000, 0}; break end
      p.z = z
    end
    if bud > 0 then
      if s.m == mon then
        if s.u >= bud or s.u + n > bud then res = {1, i, 3, 0, s.u}; break end
        p.u = true
        mask = mask + 2 ^ (i - 1)
      elseif tonumber(ARGV[a+6]) == -1 then
        missing[#missing + 1] = i
      end
    end
    if rpm > 0 and q > 0 then
      local tok = refill(s.r, s.rt, rpm, now)
      if tok < q then res = {1, i, 0, math.ceil((q - tok) * 60000 / rpm), 0}; break end
      p.r = tok
    end
    if tpm > 0 then
      local tok = refill(s.t, s.tt, tpm, now)
      if tok < charge then res = {1, i, 1, math.ceil((charge - tok) * 60000 / tpm), 0}; break end
      p.t = tok - charge
    end
    plan[i] = p
  end
  if res == nil and #missing > 0 then
    table.insert(missing, 1, 3)
    res = missing
  end
  if res == nil then
    rec.got[tid] = mask
    rec.put[#rec.put + 1] = tid
    rec.put[#rec.put + 1] = mask
    do
      for i = 1, ns do
        local p = plan[i]
        local s = p.s
        s.now = now
        if p.r then s.r = p.r - q; s.rt = now; s.dr = true end
        if p.t then s.t = p.t; s.tt = now; s.dt = true end
        if p.u then s.u = s.u + n; s.du = true end
        if p.z then
          local z = p.z
          z.n = z.n + k
          for _, m in ipairs(members(tid, k)) do
            z.add[#z.add + 1] = now + lease
            z.add[#z.add + 1] = m
          end
          z.s, z.now, z.lease = s, now, lease
        end
      end
      res = {0, mask}
    end
  end
  out[j] = res
  ns = tonumber(ARGV[ai])
  ki = ki + ns * 2 + 1
  ai = ai + 9 + ns * 6
end
for _, rk in ipairs(rorder) do
  local r = R[rk]
  if #r.put > 0 then
    redis.call('HSET', rk, unpack(r.put))
    redis.call('PEXPIREAT', rk, r.exp)
  end
end
for _, zk in ipairs(zorder) do
  local z = Z[zk]
  if #z.add > 0 then
    redis.call('ZADD', zk, unpack(z.add))
    local s = z.s
    if s.cx == nil or s.cx - z.now < z.lease then
      s.cx, s.dcx = z.now + 2 * z.lease, true
      redis.call('PEXPIRE', zk, z.lease * 2)
    end
  end
end
for _, hk in ipairs(order) do
  local s = S[hk]
  local f = {}
  if s.dr then f[#f+1] = 'r'; f[#f+1] = s.r; f[#f+1] = 'rt'; f[#f+1] = s.rt end
  if s.dt then f[#f+1] = 't'; f[#f+1] = s.t; f[#f+1] = 'tt'; f[#f+1] = s.tt end
  if s.du then f[#f+1] = 'u'; f[#f+1] = s.u end
  if s.dcx then f[#f+1] = 'cx'; f[#f+1] = s.cx end
  local renew = #f > 0 and (s.x == nil or s.x - s.now < halfday)
  if renew then f[#f+1] = 'x'; f[#f+1] = s.now + day end
  if #f > 0 then redis.call('HSET', hk, unpack(f)) end
  if renew then redis.call('PEXPIRE', hk, day) end
end
return out
`

var admitScript = redis.NewScript(luaCommon + admitLua)

// seedScript starts a subject's budget counter for a month unless it already counts it.
// KEYS: hash. ARGV: now ms (0 = server time), month YYYYMM, tokens used.
const seedLua = `
local now = clock(ARGV[1])
if redis.call('HGET', KEYS[1], 'm') ~= ARGV[2] then
  redis.call('HSET', KEYS[1], 'm', ARGV[2], 'u', ARGV[3], 'x', now + day)
  redis.call('PEXPIRE', KEYS[1], day)
end
return 0
`

var seedScript = redis.NewScript(luaCommon + seedLua)

// settleScript ends a batch of tickets. Each releases its leases and, if its record is still
// there (deleted here: a second settlement corrects nothing), corrects TPM and budget from
// the reservation to the actual tokens. As in admitScript, each subject's hash is read and
// written once per batch, and its leases are removed in one ZREM.
//
// KEYS: per ticket, 2 per subject as admitScript, then its records hash. ARGV: the number of
// tickets, then per ticket: its number of subjects, now ms, ticket id, actual tokens, month
// YYYYMM of the admission; then 4 per subject: tpm limit, tpm charged (-1 = none), budget
// reserved (-1 = none), concurrency slots held (0 = none; 1 = the ticket id, k = id:1..id:k).
const settleLua = `
local S, order, Z, zorder = {}, {}, {}, {}
local R, rorder = {}, {}
do -- which records are still there: one HMGET per records hash, then one HDEL
  local ki, ai = 1, 2
  for j = 1, tonumber(ARGV[1]) do
    local ns = tonumber(ARGV[ai])
    local rk = KEYS[ki + ns*2]
    local r = R[rk]
    if r == nil then
      r = {ids = {}, live = {}}
      R[rk] = r
      rorder[#rorder + 1] = rk
    end
    r.ids[#r.ids + 1] = ARGV[ai+2]
    ki = ki + ns * 2 + 1
    ai = ai + 5 + ns * 4
  end
  for _, rk in ipairs(rorder) do
    local r = R[rk]
    local v = redis.call('HMGET', rk, unpack(r.ids))
    for i, id in ipairs(r.ids) do r.live[id] = v[i] and v[i] ~= 'x' end
    redis.call('HDEL', rk, unpack(r.ids))
  end
end
local ki, ai = 1, 2
for j = 1, tonumber(ARGV[1]) do
  local ns = tonumber(ARGV[ai])
  local now = clock(ARGV[ai+1])
  local tid = ARGV[ai+2]
  local actual = tonumber(ARGV[ai+3])
  local mon = ARGV[ai+4]
  local rec = R[KEYS[ki + ns*2]]
  local live = rec.live[tid]
  rec.live[tid] = false -- a second settlement in the batch corrects nothing
  for i = 1, ns do
    local a = ai + 4 + (i - 1) * 4
    local tpm, charged, res, cc = tonumber(ARGV[a+1]), tonumber(ARGV[a+2]), tonumber(ARGV[a+3]), tonumber(ARGV[a+4])
    if cc > 0 then
      local zk = KEYS[ki + i*2 - 1]
      local z = Z[zk]
      if z == nil then
        z = {}
        Z[zk] = z
        zorder[#zorder + 1] = zk
      end
      for _, m in ipairs(members(tid, cc)) do z[#z + 1] = m end
    end
    local dt = live and tpm > 0 and charged >= 0 and charged ~= actual
    local db = live and res >= 0 and res ~= actual
    if dt or db then
      local hk = KEYS[ki + i*2 - 2]
      local s = S[hk]
      if s == nil then
        local h = redis.call('HMGET', hk, 't', 'tt', 'm', 'u')
        s = {t = tonumber(h[1]), tt = tonumber(h[2]), m = h[3], u = tonumber(h[4])}
        S[hk] = s
        order[#order + 1] = hk
      end
      if dt and s.tt then
        local tok = refill(s.t, s.tt, tpm, now) + charged - actual
        if tok > tpm then tok = tpm end
        s.t, s.tt, s.dt = tok, now, true
      end
      if db and s.m == mon then
        s.u, s.du = math.max(0, s.u + actual - res), true
      end
    end
  end
  ki = ki + ns * 2 + 1
  ai = ai + 5 + ns * 4
end
for _, zk in ipairs(zorder) do redis.call('ZREM', zk, unpack(Z[zk])) end
for _, hk in ipairs(order) do
  local s = S[hk]
  local f = {}
  if s.dt then f[#f+1] = 't'; f[#f+1] = s.t; f[#f+1] = 'tt'; f[#f+1] = s.tt end
  if s.du then f[#f+1] = 'u'; f[#f+1] = s.u end
  if #f > 0 then redis.call('HSET', hk, unpack(f)) end
end
return 0
`

var settleScript = redis.NewScript(luaCommon + settleLua)

// undoScript undoes an admission whose reply the gateway did not wait for: if its record says
// it was admitted, it refunds the request, the tokens and the budget it charged, and releases
// its leases; in every case it leaves a tombstone in the records hash, so that the admission,
// if it reaches Redis only now, charges nothing. KEYS and ARGV: those of the admission.
// Returns 1 when it refunded an admission.
const undoLua = `
local now = clock(ARGV[1])
local n = tonumber(ARGV[2])
local tid = ARGV[4]
local mon = ARGV[5]
local q, k = tonumber(ARGV[7]), tonumber(ARGV[8])
local rec = KEYS[#KEYS]
local prev = redis.call('HGET', rec, tid)
redis.call('HSET', rec, tid, 'x')
redis.call('PEXPIREAT', rec, ARGV[6])
if prev == false or prev == 'x' then return 0 end
local mask = tonumber(prev)
for i = 1, (#KEYS - 1) / 2 do
  local a = 8 + (i - 1) * 6
  local rpm, tpm, cc, charge = tonumber(ARGV[a+1]), tonumber(ARGV[a+2]), tonumber(ARGV[a+3]), tonumber(ARGV[a+5])
  if cc > 0 and k > 0 then redis.call('ZREM', KEYS[i*2], unpack(members(tid, k))) end
  local h = redis.call('HMGET', KEYS[i*2-1], 'r', 'rt', 't', 'tt', 'm', 'u')
  local f = {}
  if rpm > 0 and q > 0 and h[2] then
    local tok = refill(tonumber(h[1]), tonumber(h[2]), rpm, now) + q
    if tok > rpm then tok = rpm end
    f[#f+1] = 'r'; f[#f+1] = tok; f[#f+1] = 'rt'; f[#f+1] = now
  end
  if tpm > 0 and charge > 0 and h[4] then
    local tok = refill(tonumber(h[3]), tonumber(h[4]), tpm, now) + charge
    if tok > tpm then tok = tpm end
    f[#f+1] = 't'; f[#f+1] = tok; f[#f+1] = 'tt'; f[#f+1] = now
  end
  if math.floor(mask / 2 ^ (i - 1)) % 2 == 1 and h[5] == mon then
    f[#f+1] = 'u'; f[#f+1] = math.max(0, tonumber(h[6]) - n)
  end
  if #f > 0 then redis.call('HSET', KEYS[i*2-1], unpack(f)) end
end
return 1
`

var undoScript = redis.NewScript(luaCommon + undoLua)

const (
	settleQueue   = 4096
	settleBatch   = 256
	settlePending = 8192 // settlements kept for retry while Redis is down
	admitQueue    = 4096
)

// redisTier is the global tier. During an outage (health.up false) Admit skips Redis and the
// prober looks for its return.
type redisTier struct {
	l          *Limiter
	client     *redis.Client
	prefix     string
	timeout    time.Duration
	lease      time.Duration
	recordTTL  int64 // ms: the period of a records hash
	recHash    atomic.Pointer[recordsHash]
	beforeSend func() // tests: runs in the admitter before each round trip
	batchMax   int
	serverTime bool // Options.Now unset: scripts read Redis's clock, shared by every gateway
	health     *health
	instance   string
	seq        atomic.Uint64
	calls      chan *call    // admissions for the admitter
	settleCh   chan settleOp // settlements and undos for the settler
	kick       chan struct{} // wakes the prober
	liveMu     sync.Mutex
	live       map[*Ticket]struct{} // tickets holding a lease, renewed by renewer
	share      float64              // Options.LeaseShare; <= 0: no leases
	leaseHold  time.Duration        // a lease is renewed after this long
	leasesMu   sync.Mutex
	leases     map[*leaseSet]*subjectState // leases not ended, by subject
}

// settleOp is a settlement (t set) or the undo of an admission whose reply the gateway did not
// wait for (t nil; keys and args are the admission's).
type settleOp struct {
	t      *Ticket
	actual int64
	keys   []string
	args   []any
}

func newRedisTier(l *Limiter, o Options) (*redisTier, error) {
	ro, err := redis.ParseURL(o.RedisURL)
	if err != nil {
		return nil, fmt.Errorf("admit: parse redis url: %w", err)
	}
	ro.DialTimeout = o.RedisTimeout
	ro.ReadTimeout = o.RedisTimeout
	ro.WriteTimeout = o.RedisTimeout
	ro.PoolTimeout = o.RedisTimeout
	ro.MaxRetries = -1
	ro.ContextTimeoutEnabled = true
	ro.DisableIdentity = true
	var id [6]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, fmt.Errorf("admit: ticket id: %w", err)
	}
	r := &redisTier{
		l:          l,
		client:     redis.NewClient(ro),
		prefix:     o.KeyPrefix,
		timeout:    o.RedisTimeout,
		lease:      o.LeaseTTL,
		recordTTL:  o.ReservationTTL.Milliseconds(),
		batchMax:   o.AdmitBatch,
		serverTime: o.Now == nil,
		health:     newHealth(o.FailuresToFallback, o.ProbesToRecover),
		instance:   hex.EncodeToString(id[:]) + ":",
		calls:      make(chan *call, admitQueue),
		settleCh:   make(chan settleOp, settleQueue),
		kick:       make(chan struct{}, 1),
		live:       make(map[*Ticket]struct{}),
		share:      o.LeaseShare,
		leaseHold:  min(o.ReservationTTL/2, time.Minute),
		leases:     make(map[*leaseSet]*subjectState),
	}
	l.wg.Add(3 + o.AdmitPipelines)
	for range o.AdmitPipelines {
		go r.admitter()
	}
	go r.settler()
	go r.renewer()
	go r.prober()
	return r, nil
}

func (r *redisTier) close() error {
	if err := r.client.Close(); err != nil {
		return fmt.Errorf("admit: close redis: %w", err)
	}
	return nil
}

func (r *redisTier) nowArg(now time.Time) int64 {
	if r.serverTime {
		return 0
	}
	return now.UnixMilli()
}

// keys returns the Redis keys of an admission of cs: two per subject, then the records hash
// h (of the current period).
func (r *redisTier) keys(cs []charge, h *recordsHash) []string {
	keys := make([]string, 0, 2*len(cs)+1)
	for i := range cs {
		st := cs[i].st
		sk := st.redisKeys.Load()
		if sk == nil { // first use of this subject: the names are kept with its state
			sub := scopeNames[st.key.scope] + ":" + strconv.FormatInt(st.key.id, 10)
			sk = &[2]string{r.prefix + "s:" + sub, r.prefix + "c:" + sub}
			st.redisKeys.Store(sk)
		}
		keys = append(keys, sk[0], sk[1])
	}
	return append(keys, h.key)
}

// recordsHash names the records hash of one period and says when it expires.
type recordsHash struct {
	period int64
	key    string
	expire int64 // unix ms
}

// records returns the records hash of the current period. Periods follow the wall clock (not
// Options.Now): they only bound how long records stay in Redis.
func (r *redisTier) records() *recordsHash {
	p := time.Now().UnixMilli() / r.recordTTL
	if h := r.recHash.Load(); h != nil && h.period == p {
		return h
	}
	h := &recordsHash{period: p, key: r.prefix + "r:" + r.instance + strconv.FormatInt(p, 10), expire: (p + 2) * r.recordTTL}
	r.recHash.Store(h)
	return h
}

// yyyymm names month index m in Redis.
func yyyymm(m int32) string { return strconv.Itoa(int(m/12)*100 + int(m%12) + 1) }

// failed records a failed admission round trip; after FailuresToFallback in a row it switches
// to the local tier (logged and counted once per outage) and wakes the prober. Settlements and
// lease renewals do not count: nothing waits for them, and they are retried.
func (r *redisTier) failed(err error) {
	if !r.health.failure() {
		return
	}
	r.l.m.switches.WithLabelValues(tierLocal).Inc()
	r.l.log.Warn("quota redis unavailable; limits are enforced per gateway until it recovers", "err", err,
		"failures", r.health.failN)
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// admit decides t in Redis. decided is false when Redis failed and the local tier must decide.
func (r *redisTier) admit(ctx context.Context, t *Ticket, now time.Time) (decided bool, err error) {
	cs := t.charges()
	mi := r.l.monthOf(now)
	cur, next := mi.idx, mi.next
	n := t.reserved
	lease := false
	for i := range cs {
		lease = lease || cs[i].limits.MaxConcurrent > 0
	}
	keys, args := r.request(t, now)
	var res []int64
	for attempt := 0; ; attempt++ {
		// The same id on every attempt: an admission the script already charged is not
		// charged again.
		res, err = r.call(ctx, keys, args)
		if err != nil {
			return false, nil
		}
		if len(res) == 0 || res[0] != 3 || attempt == 3 {
			break
		}
		for _, i := range res[1:] {
			if i < 1 || int(i) > len(cs) {
				break
			}
			if attempt == 2 { // the counter keeps vanishing: admit without the budget
				args[8+(i-1)*6+5] = -2
				continue
			}
			c := &cs[i-1]
			if err := r.seed(ctx, c.st, keys[(i-1)*2], now, cur, mi.start, attempt > 0); err != nil {
				if errors.Is(err, errRedisSeed) {
					r.failed(err)
					return false, nil
				}
				r.l.log.Warn("quota budget seed failed; admitting without budget check", "scope", scopeNames[c.st.key.scope], "subject_id", c.st.key.id, "err", err)
				args[8+(i-1)*6+5] = -2
			}
		}
	}
	switch {
	case len(res) >= 2 && res[0] == 0:
		mask := res[1]
		for i := range cs {
			c := &cs[i]
			if c.limits.TokensPerMinute > 0 {
				c.tpm = min(n, int64(c.limits.TokensPerMinute))
				if t.grant != nil {
					c.tpm = t.grant.toks
				}
			}
			c.budget = mask&(1<<i) != 0
		}
		t.redis = true
		t.month = cur
		t.hasLease = lease && t.slots() > 0
		r.l.lockAll(cs)
		ns := now.UnixNano()
		for i := range cs {
			cs[i].st.inflight++
			cs[i].st.lastUsed.Store(ns)
		}
		unlockAll(cs)
		if t.hasLease {
			r.liveMu.Lock()
			r.live[t] = struct{}{}
			r.liveMu.Unlock()
		}
		return true, nil
	case len(res) == 5 && res[0] == 1 && res[1] >= 1 && int(res[1]) <= len(cs) && res[2] >= 0 && res[2] < int64(len(reasonNames)):
		c := &cs[res[1]-1]
		why := reason(res[2])
		retry := time.Duration(res[3]) * time.Millisecond
		if why == reasonBudget {
			retry = next.Sub(now)
		}
		if t.grant == nil { // a refused lease is not a refused request
			r.l.m.rejected(c.st.key.scope, why)
		}
		return true, reject(c.st.key.scope, why, c.limits, n, res[4], retry)
	}
	// An unexpected reply ({4}: undone already, or garbage): decide locally, and undo in case
	// it was an admission.
	r.undo(keys, args)
	r.l.log.Error("quota redis: unexpected admission reply; decided locally", "reply", fmt.Sprint(res))
	return false, nil
}

// request gives t a new id and returns the keys and arguments of its admission script.
func (r *redisTier) request(t *Ticket, now time.Time) ([]string, []any) {
	cs := t.charges()
	t.id = r.instance + strconv.FormatUint(r.seq.Add(1), 10)
	h := r.records() // one period for the record's hash and its expiry
	keys := r.keys(cs, h)
	t.keys = keys
	n := t.reserved
	q, k := int64(1), int64(1)
	if g := t.grant; g != nil {
		q, k = g.reqs, g.slots
	}
	args := make([]any, 0, 8+6*len(cs))
	args = append(args, r.nowArg(now), n, r.lease.Milliseconds(), t.id, yyyymm(r.l.monthOf(now).idx), h.expire, q, k)
	for i := range cs {
		lim := cs[i].limits
		charge := int64(0)
		if lim.TokensPerMinute > 0 {
			charge = min(n, int64(lim.TokensPerMinute))
			if t.grant != nil {
				charge = t.grant.toks
			}
		}
		args = append(args, lim.RequestsPerMinute, lim.TokensPerMinute, lim.MaxConcurrent, lim.MonthlyTokenBudget, charge, -1)
	}
	return keys, args
}

var errRedisSeed = errors.New("redis")

// seed creates a subject's budget counter for month cur from BudgetUsed, once per gateway
// (seedMu makes concurrent requests of the subject wait for the first one). Every gateway may
// seed once; the first seed of the month wins. force seeds again (the counter vanished).
func (r *redisTier) seed(ctx context.Context, st *subjectState, key string, now time.Time, cur int32, start time.Time, force bool) error {
	st.seedMu.Lock()
	defer st.seedMu.Unlock()
	if !force && st.redisSeeded.Load() == cur {
		return nil
	}
	var used int64
	if f := r.l.o.BudgetUsed; f != nil {
		var err error
		if used, err = f(ctx, scopeNames[st.key.scope], st.key.id, start); err != nil {
			return fmt.Errorf("admit: budget used: %w", err)
		}
	}
	rctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	if err := seedScript.Run(rctx, r.client, []string{key}, r.nowArg(now), yyyymm(cur), used).Err(); err != nil {
		return fmt.Errorf("admit: seed budget: %w: %w", errRedisSeed, err)
	}
	st.redisSeeded.Store(cur)
	return nil
}

// settle queues t's settlement for the settler. Every ticket of the global tier is settled
// in Redis: its record must go even when there is nothing to correct.
func (r *redisTier) settle(t *Ticket, actual int64) {
	if t.hasLease {
		r.liveMu.Lock()
		delete(r.live, t)
		r.liveMu.Unlock()
	}
	r.queue(settleOp{t: t, actual: actual})
}

// undo queues the undo of an admission (keys and args as sent) whose reply the gateway did not
// wait for. It copies args: the caller may reuse them.
func (r *redisTier) undo(keys []string, args []any) {
	r.l.m.reconciled.Inc()
	r.queue(settleOp{keys: keys, args: append([]any(nil), args...)})
}

func (r *redisTier) queue(op settleOp) {
	if r.l.closing.Load() {
		r.l.m.settleDropped.Inc()
		return
	}
	select {
	case r.settleCh <- op:
	case <-r.l.stop:
		r.l.m.settleDropped.Inc()
	}
}

// settler sends settlements in batches: whatever queued while the previous batch was in
// flight goes in one pipeline. On stop it drains the queue and flushes it.
func (r *redisTier) settler() {
	defer r.l.wg.Done()
	batch := make([]settleOp, 0, settleBatch)
	var pending []settleOp
	retry := time.NewTicker(r.l.o.ProbeInterval)
	defer retry.Stop()
	for {
		select {
		case op := <-r.settleCh:
			batch = append(batch[:0], op)
		fill:
			for len(batch) < settleBatch {
				select {
				case op := <-r.settleCh:
					batch = append(batch, op)
				default:
					break fill
				}
			}
			pending = r.flushAll(append(pending, batch...))
		case <-retry.C:
			if len(pending) > 0 {
				pending = r.flushAll(pending)
			}
		case <-r.l.stop:
			for {
				select {
				case op := <-r.settleCh:
					pending = append(pending, op)
					continue
				default:
				}
				break
			}
			if left := r.flushAll(pending); len(left) > 0 {
				r.l.m.settleDropped.Add(float64(len(left)))
				r.l.log.Warn("quota redis settlements lost at shutdown", "count", len(left))
			}
			return
		}
	}
}

// flushAll sends ops in batches and returns what could not be sent (bounded; the excess is
// dropped and counted). A batch sent again after a failure is harmless: settlements and
// undos are idempotent (the admission's record).
func (r *redisTier) flushAll(ops []settleOp) []settleOp {
	if !r.health.up.Load() {
		return r.bound(ops)
	}
	for len(ops) > 0 {
		k := min(len(ops), settleBatch)
		if err := r.flush(ops[:k]); err != nil {
			var reply redis.Error
			if !errors.As(err, &reply) {
				// Kept for the next tick. Only admissions decide the tier: a settlement
				// is never waited for.
				r.l.log.Debug("quota redis settlements delayed", "count", len(ops), "err", err)
				return r.bound(ops)
			}
			// Redis answered with an error: sending the batch again would fail again.
			r.l.m.settleDropped.Add(float64(k))
			r.l.log.Error("quota redis refused settlements", "count", k, "err", err)
		}
		ops = ops[k:]
	}
	return ops[:0]
}

func (r *redisTier) bound(ops []settleOp) []settleOp {
	if over := len(ops) - settlePending; over > 0 {
		r.l.m.settleDropped.Add(float64(over))
		ops = append(ops[:0], ops[over:]...)
	}
	return ops
}

// flush sends one batch; a panic on bad data is recorded and the batch dropped (counted).
func (r *redisTier) flush(ops []settleOp) (err error) {
	defer func() {
		if v := recover(); v != nil {
			r.l.o.Panics.Record(panics.Admit, v, "loop", "settler")
			r.l.m.settleDropped.Add(float64(len(ops)))
			err = nil
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*r.timeout)
	defer cancel()
	err = r.pipeSettle(ctx, ops)
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		if err = settleScript.Load(ctx, r.client).Err(); err == nil {
			if err = undoScript.Load(ctx, r.client).Err(); err == nil {
				err = r.pipeSettle(ctx, ops)
			}
		}
	}
	if err != nil {
		return fmt.Errorf("admit: settle %d tickets: %w", len(ops), err)
	}
	return nil
}

func (r *redisTier) pipeSettle(ctx context.Context, ops []settleOp) error {
	pipe := r.client.Pipeline()
	now := r.nowArg(r.l.now())
	var keys []string
	args := []any{0}
	settles := 0
	for _, op := range ops {
		t := op.t
		if t == nil {
			op.args[0] = now
			undoScript.EvalSha(ctx, pipe, op.keys, op.args...)
			continue
		}
		settles++
		cs := t.charges()
		args = append(args, len(cs), now, t.id, op.actual, yyyymm(t.month))
		for i := range cs {
			c := &cs[i]
			res, cc := int64(-1), 0
			if c.budget {
				res = t.reserved
			}
			if t.hasLease && c.limits.MaxConcurrent > 0 {
				cc = int(t.slots())
			}
			args = append(args, c.limits.TokensPerMinute, c.tpm, res, cc)
		}
		keys = append(keys, t.keys...)
	}
	if settles > 0 {
		args[0] = settles
		settleScript.EvalSha(ctx, pipe, keys, args...)
	}
	cmds, err := pipe.Exec(ctx)
	if err != nil {
		for _, c := range cmds {
			if e := c.Err(); e != nil && redis.HasErrorPrefix(e, "NOSCRIPT") {
				return e
			}
		}
	}
	return err
}

// renewer extends the leases of live tickets every LeaseTTL/3, so a slot outlives a long
// stream but not a dead gateway.
func (r *redisTier) renewer() {
	defer r.l.wg.Done()
	tick := time.NewTicker(r.lease / 3)
	defer tick.Stop()
	var batch []*Ticket
	for {
		select {
		case <-r.l.stop:
			return
		case <-tick.C:
		}
		r.endLeases()
		batch = batch[:0]
		r.liveMu.Lock()
		for t := range r.live {
			batch = append(batch, t)
		}
		r.liveMu.Unlock()
		if len(batch) == 0 || !r.health.up.Load() {
			continue
		}
		if err := r.renew(batch); err != nil {
			r.l.log.Debug("quota redis lease renewal failed", "err", err)
		}
	}
}

func (r *redisTier) renew(ts []*Ticket) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*r.timeout)
	defer cancel()
	var exp int64
	if r.serverTime {
		tm, err := r.client.Time(ctx).Result()
		if err != nil {
			return fmt.Errorf("admit: renew leases: %w", err)
		}
		exp = tm.Add(r.lease).UnixMilli()
	} else {
		exp = r.l.now().Add(r.lease).UnixMilli()
	}
	pipe := r.client.Pipeline()
	for _, t := range ts {
		cs := t.charges()
		keys := t.keys
		for i := range cs {
			if cs[i].limits.MaxConcurrent > 0 {
				ms := t.members()
				zs := make([]redis.Z, len(ms))
				for j, m := range ms {
					zs[j] = redis.Z{Score: float64(exp), Member: m}
				}
				pipe.ZAddXX(ctx, keys[i*2+1], zs...)
				pipe.PExpire(ctx, keys[i*2+1], 2*r.lease)
			}
		}
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("admit: renew %d leases: %w", len(ts), err)
	}
	return nil
}

// prober waits for an outage, then pings Redis every ProbeInterval until ProbesToRecover
// pings in a row succeed.
func (r *redisTier) prober() {
	defer r.l.wg.Done()
	for {
		select {
		case <-r.l.stop:
			return
		case <-r.kick:
		}
		tick := time.NewTicker(r.l.o.ProbeInterval)
		for !r.health.up.Load() {
			select {
			case <-r.l.stop:
				tick.Stop()
				return
			case <-tick.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
			err := r.client.Ping(ctx).Err()
			cancel()
			if r.health.probe(err == nil) {
				r.l.m.switches.WithLabelValues(tierRedis).Inc()
				r.l.log.Info("quota redis recovered; limits are global again", "probes", r.health.probeN)
			} else if err != nil && !errors.Is(err, context.DeadlineExceeded) {
				r.l.log.Debug("quota redis probe failed", "err", err)
			}
		}
		tick.Stop()
	}
}
