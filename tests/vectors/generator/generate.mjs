#!/usr/bin/env node
// Independent generator of Web3Signer (`POST /api/v1/eth2/sign/{pubkey}`) signing
// test vectors for ensign.
//
// Everything consensus-related comes from Lodestar's published npm packages:
//   - SSZ types, JSON (beacon-API) encoding and hash_tree_root: @lodestar/types (+ @chainsafe/ssz)
//   - network fork schedules / genesis data:                 @lodestar/config/networks
//   - computeDomain / computeSigningRoot / getForkVersion:     @lodestar/state-transition
//   - domain cross-check (getDomain, getDomainForVoluntaryExit): @lodestar/config createBeaconConfig
//   - BLS keys and signatures:                                @chainsafe/blst
// Nothing here merkleizes anything by hand; this file only builds (random) values,
// shapes the Web3Signer request JSON and records what the libraries compute.
//
// Usage: node generate.mjs [--seed N] [--out DIR] [--networks a,b] [--per-combo K]
//                          [--networks-file PATH]
// See README.md.

import {spawnSync} from "node:child_process";
import {createHash} from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import {fileURLToPath} from "node:url";
import {parseArgs} from "node:util";

const GENERATOR_DIR = path.dirname(fileURLToPath(import.meta.url));
const GENERATOR_NAME = "tests/vectors/generator/generate.mjs";
const ALL_NETWORKS = ["mainnet", "hoodi", "sepolia", "holesky", "gnosis"];
// Lodestar picks its preset from LODESTAR_PRESET when @lodestar/params is first loaded.
const PRESET_OF = {mainnet: "mainnet", hoodi: "mainnet", sepolia: "mainnet", holesky: "mainnet", gnosis: "gnosis"};
// Forks covered (Web3Signer / beacon-API upper-case names) and Lodestar's fork names.
const FORKS = ["PHASE0", "ALTAIR", "BELLATRIX", "CAPELLA", "DENEB", "ELECTRA", "FULU"];
const LODESTAR_FORK = {
  PHASE0: "phase0",
  ALTAIR: "altair",
  BELLATRIX: "bellatrix",
  CAPELLA: "capella",
  DENEB: "deneb",
  ELECTRA: "electra",
  FULU: "fulu",
};
// Span (in epochs) used as the range of the last scheduled fork (no next fork scheduled).
const OPEN_RANGE_EPOCHS = 1 << 20;

const {values: args} = parseArgs({
  options: {
    seed: {type: "string", default: "1"},
    out: {type: "string"},
    networks: {type: "string", default: ALL_NETWORKS.join(",")},
    "per-combo": {type: "string", default: "2"},
    "networks-file": {type: "string"},
    worker: {type: "boolean", default: false},
    help: {type: "boolean", short: "h", default: false},
  },
  strict: true,
});

if (args.help) {
  console.log(
    "usage: node generate.mjs [--seed N] [--out DIR] [--networks mainnet,hoodi,sepolia,holesky,gnosis] [--per-combo K] [--networks-file PATH]"
  );
  process.exit(0);
}

const seed = parseSeed(args.seed);
const perCombo = Number.parseInt(args["per-combo"], 10);
if (!Number.isInteger(perCombo) || perCombo < 1) fail(`--per-combo must be a positive integer, got ${args["per-combo"]}`);
const networks = args.networks
  .split(",")
  .map((s) => s.trim())
  .filter(Boolean);
for (const n of networks) if (!ALL_NETWORKS.includes(n)) fail(`unknown network ${n} (known: ${ALL_NETWORKS.join(", ")})`);
const outDir = path.resolve(args.out ?? path.join(GENERATOR_DIR, "..", "signing"));


// ---------------------------------------------------------------------------------------------
// main process: one worker child per Lodestar preset, then networks.json

function runMain() {
  const t0 = Date.now();
  fs.mkdirSync(outDir, {recursive: true});
  const networksFile = path.resolve(
    args["networks-file"] ??
      (args.out === undefined ? path.join(GENERATOR_DIR, "..", "networks.json") : path.join(outDir, "networks.json"))
  );
  const byPreset = new Map();
  for (const n of networks) {
    const p = PRESET_OF[n];
    if (!byPreset.has(p)) byPreset.set(p, []);
    byPreset.get(p).push(n);
  }
  const infos = {};
  let packages = null;
  for (const [preset, nets] of byPreset) {
    const res = spawnSync(
      process.execPath,
      [
        fileURLToPath(import.meta.url),
        "--worker",
        "--seed",
        String(seed),
        "--out",
        outDir,
        "--networks",
        nets.join(","),
        "--per-combo",
        String(perCombo),
      ],
      {env: {...process.env, LODESTAR_PRESET: preset}, stdio: ["ignore", "pipe", "inherit"], maxBuffer: 1 << 26}
    );
    if (res.status !== 0) fail(`worker for preset ${preset} (${nets.join(",")}) failed with status ${res.status}`);
    const report = JSON.parse(res.stdout.toString("utf8"));
    packages = report.packages;
    Object.assign(infos, report.networks);
    for (const n of nets) console.error(`${n}: ${report.counts[n]} cases -> ${path.join(outDir, `${n}.json`)}`);
  }
  const ordered = {};
  for (const n of networks) ordered[n] = infos[n];
  const doc = {generator: GENERATOR_NAME, packages, networks: ordered};
  fs.mkdirSync(path.dirname(networksFile), {recursive: true});
  fs.writeFileSync(networksFile, `${JSON.stringify(doc, null, 2)}\n`);
  console.error(`networks -> ${networksFile} (${((Date.now() - t0) / 1000).toFixed(1)}s)`);
}

// ---------------------------------------------------------------------------------------------
// worker: all networks of one preset

async function runWorker() {
  // Dynamic imports: LODESTAR_PRESET must be in the environment before @lodestar/params loads.
  const params = await import("@lodestar/params");
  const {ssz} = await import("@lodestar/types");
  const {BitArray, ByteVectorType, ByteListType, BitListType, BitVectorType, ContainerType, ListBasicType,
    ListCompositeType, VectorBasicType, VectorCompositeType, UintNumberType, UintBigintType, BooleanType} =
    await import("@chainsafe/ssz");
  const st = await import("@lodestar/state-transition");
  const {createChainForkConfig, createBeaconConfig} = await import("@lodestar/config");
  const lodestarNetworks = await import("@lodestar/config/networks");
  // Holesky was dropped from @lodestar/config after 1.36.x; take its config from that release.
  const holeskyNetworks = await import("lodestar-config-holesky/networks");
  const blst = await import("@chainsafe/blst");

  const packages = readPackageVersions();
  const SLOTS_PER_EPOCH = params.SLOTS_PER_EPOCH;
  const preset = process.env.LODESTAR_PRESET ?? "mainnet";
  if (params.ACTIVE_PRESET !== preset) fail(`Lodestar active preset ${params.ACTIVE_PRESET} != requested ${preset}`);

  function networkInfo(config, genesis) {
    const forks = {};
    for (const F of FORKS.slice(1)) {
      const f = config.forks[LODESTAR_FORK[F]];
      forks[F] = {version: bytesToHex(f.version), epoch: Number.isFinite(f.epoch) ? f.epoch : null};
    }
    return {
      genesis_fork_version: bytesToHex(config.GENESIS_FORK_VERSION),
      genesis_validators_root: genesis.genesisValidatorsRoot.toLowerCase(),
      slots_per_epoch: SLOTS_PER_EPOCH,
      forks,
    };
  }

  // -------------------------------------------------------------------------------------------
  class NetworkGenerator {
    constructor({network, config, beaconConfig, gvr}) {
      this.network = network;
      this.config = config;
      this.beaconConfig = beaconConfig;
      this.gvr = gvr;
      this.rng = new Rng(`ensign-vectors|seed=${seed}|network=${network}`);
      this.cases = [];
      // Pools of valid BLS points used for signature/pubkey fields *inside* payloads
      // (so a strict parser that decompresses them does not choke on random bytes).
      this.sigPool = [];
      this.pkPool = [];
      for (let i = 0; i < 8; i++) {
        const sk = blst.SecretKey.fromKeygen(this.rng.bytes(32));
        this.pkPool.push(sk.toPublicKey().toBytes());
        this.sigPool.push(sk.sign(this.rng.bytes(32)).toBytes());
      }
    }

    // Fork F's own epoch range [start, end), or null when F has no epochs of its own
    // (a later fork activates at the same epoch) or is not scheduled.
    forkRange(F) {
      const f = this.config.forks[LODESTAR_FORK[F]];
      if (!Number.isFinite(f.epoch)) return null;
      const i = FORKS.indexOf(F);
      let end;
      if (i + 1 < FORKS.length) end = this.config.forks[LODESTAR_FORK[FORKS[i + 1]]].epoch;
      else {
        // after FULU: the next Lodestar fork (gloas) if scheduled
        const after = this.config.forksAscendingEpochOrder.find((x) => x.seq > f.seq && Number.isFinite(x.epoch));
        end = after ? after.epoch : Infinity;
      }
      if (!Number.isFinite(end)) end = f.epoch + OPEN_RANGE_EPOCHS;
      if (end <= f.epoch) return null;
      return {start: f.epoch, end};
    }

    // Range of epochs before F's activation that still belong to F's predecessor fork
    // (so fork_info.previous_version is the right version for them).
    prevRange(F) {
      if (F === "PHASE0") return null;
      const prevF = FORKS[FORKS.indexOf(F) - 1];
      const r = this.forkRange(prevF);
      const f = this.config.forks[LODESTAR_FORK[F]];
      if (!r || r.end !== f.epoch) return null;
      return r;
    }

    forkInfo(F) {
      const f = this.config.forks[LODESTAR_FORK[F]];
      return {
        fork: {previousVersion: f.prevVersion, currentVersion: f.version, epoch: f.epoch},
        json: {
          fork: {
            previous_version: bytesToHex(f.prevVersion),
            current_version: bytesToHex(f.version),
            epoch: String(f.epoch),
          },
          genesis_validators_root: bytesToHex(this.gvr),
        },
      };
    }

    // Domain per the Web3Signer/spec rule applied to the request's fork_info, cross-checked
    // against Lodestar's own BeaconConfig.getDomain for the same network schedule.
    domain(F, domainType, messageEpoch) {
      const fi = this.forkInfo(F);
      const version = st.getForkVersion(fi.fork, messageEpoch);
      const d = st.computeDomain(domainType, version, this.gvr);
      const stateSlot = st.computeStartSlotAtEpoch(fi.fork.epoch);
      const d2 = this.beaconConfig.getDomain(stateSlot, domainType, st.computeStartSlotAtEpoch(messageEpoch));
      if (!bytesEq(d, d2)) fail(`${this.network}/${F}: domain mismatch fork_info rule vs Lodestar getDomain`);
      return d;
    }

    voluntaryExitDomain(F, exitEpoch) {
      const fi = this.forkInfo(F);
      const stateSlot = st.computeStartSlotAtEpoch(fi.fork.epoch);
      const d = this.beaconConfig.getDomainForVoluntaryExit(stateSlot, st.computeStartSlotAtEpoch(exitEpoch));
      // cross-check: EIP-7044 from Deneb on pins CAPELLA_FORK_VERSION; before, the fork_info rule.
      const expected =
        FORKS.indexOf(F) >= FORKS.indexOf("DENEB")
          ? st.computeDomain(params.DOMAIN_VOLUNTARY_EXIT, this.config.CAPELLA_FORK_VERSION, this.gvr)
          : st.computeDomain(params.DOMAIN_VOLUNTARY_EXIT, st.getForkVersion(fi.fork, exitEpoch), this.gvr);
      if (!bytesEq(d, expected)) fail(`${this.network}/${F}: voluntary exit domain mismatch`);
      return d;
    }

    // --- random helpers ----------------------------------------------------------------------
    epochIn(r, minEpoch = 0) {
      const lo = Math.max(r.start, minEpoch);
      if (lo >= r.end) fail(`empty epoch range ${lo}..${r.end}`);
      return this.rng.intBetween(lo, r.end - 1);
    }
    slotInEpoch(epoch) {
      return epoch * SLOTS_PER_EPOCH + this.rng.int(SLOTS_PER_EPOCH);
    }
    root() {
      return this.rng.bytes(32);
    }
    sig() {
      return this.rng.pick(this.sigPool);
    }
    pk() {
      return this.rng.pick(this.pkPool);
    }
    bits(len, {nonEmpty = true} = {}) {
      const bools = Array.from({length: len}, () => this.rng.int(3) === 0);
      if (nonEmpty && !bools.some(Boolean)) bools[this.rng.int(len)] = true;
      return BitArray.fromBoolArray(bools);
    }
    validatorIndex() {
      return this.rng.int(2_000_000);
    }

    // Generic random value of an SSZ type (lists kept short, BLS-sized byte vectors valid points).
    rand(type, maxList = 2) {
      if (type instanceof ContainerType) {
        const v = {};
        for (const [k, t] of Object.entries(type.fields)) v[k] = this.rand(t, maxList);
        return v;
      }
      if (type instanceof ByteVectorType) {
        if (type.lengthBytes === 96) return this.sig();
        if (type.lengthBytes === 48) return this.pk();
        return this.rng.bytes(type.lengthBytes);
      }
      if (type instanceof ByteListType) return this.rng.bytes(this.rng.int(Math.min(type.limitBytes, 48) + 1));
      if (type instanceof BitListType) return this.bits(1 + this.rng.int(Math.min(type.limitBits, 128)));
      if (type instanceof BitVectorType) return this.bits(type.lengthBits);
      if (type instanceof ListBasicType || type instanceof ListCompositeType) {
        const n = this.rng.int(Math.min(type.limit, maxList) + 1);
        return Array.from({length: n}, () => this.rand(type.elementType, maxList));
      }
      if (type instanceof VectorBasicType || type instanceof VectorCompositeType)
        return Array.from({length: type.length}, () => this.rand(type.elementType, maxList));
      if (type instanceof UintBigintType) return bytesToBigintLE(this.rng.bytes(type.byteLength));
      if (type instanceof UintNumberType)
        return type.byteLength >= 8 ? this.rng.int(2 ** 32) : this.rng.int(2 ** (8 * type.byteLength));
      if (type instanceof BooleanType) return this.rng.int(2) === 1;
      fail(`rand: unsupported SSZ type ${type.typeName}`);
    }

    // Convert JS numbers to bigint where the Lodestar type is a UintBigintType.
    fit(type, v) {
      if (type instanceof ContainerType) {
        const o = {};
        for (const [k, t] of Object.entries(type.fields)) o[k] = this.fit(t, v[k]);
        return o;
      }
      if (
        (type instanceof ListCompositeType || type instanceof VectorCompositeType ||
          type instanceof ListBasicType || type instanceof VectorBasicType) && Array.isArray(v)
      )
        return v.map((x) => this.fit(type.elementType, x));
      if (type instanceof UintBigintType && typeof v === "number") return BigInt(v);
      return v;
    }

    // computeSigningRoot over the value, re-checked over the value parsed back (Lodestar fromJson)
    // from the exact JSON that goes into the request, so the JSON and the root cannot drift apart.
    signingRoot(type, value, json, domain) {
      const r = st.computeSigningRoot(type, value, domain);
      const r2 = st.computeSigningRoot(type, type.fromJson(json), domain);
      if (!bytesEq(r, r2)) fail(`JSON round-trip changed the signing root (${type.typeName})`);
      return r;
    }

    // --- payload builders --------------------------------------------------------------------
    attestationData(F, slot, targetEpoch) {
      const sourceEpoch = Math.max(0, targetEpoch - 1 - this.rng.int(3));
      return {
        slot,
        index: FORKS.indexOf(F) >= FORKS.indexOf("ELECTRA") ? 0 : this.rng.int(64),
        beaconBlockRoot: this.root(),
        source: {epoch: sourceEpoch, root: this.root()},
        target: {epoch: targetEpoch, root: this.root()},
      };
    }

    // Electra+ Attestation (committee_bits) or phase0 Attestation
    attestation(F, slot) {
      const ep = Math.floor(slot / SLOTS_PER_EPOCH);
      const data = this.attestationData(F, slot, ep);
      if (FORKS.indexOf(F) >= FORKS.indexOf("ELECTRA")) {
        const committeeBits = this.bits(params.MAX_COMMITTEES_PER_SLOT);
        const nCommittees = committeeBits.getTrueBitIndexes().length;
        return {
          aggregationBits: this.bits(nCommittees * (1 + this.rng.int(48))),
          data,
          signature: this.sig(),
          committeeBits,
        };
      }
      return {aggregationBits: this.bits(1 + this.rng.int(128)), data, signature: this.sig()};
    }

    indexedAttestation(F, data) {
      const n = 1 + this.rng.int(4);
      const idx = new Set();
      while (idx.size < n) idx.add(this.validatorIndex());
      return {attestingIndices: [...idx].sort((a, b) => a - b), data, signature: this.sig()};
    }

    // Realistic non-empty phase0/altair block body (full block is in the request).
    fullBlock(F, slot) {
      const types = ssz[LODESTAR_FORK[F]];
      const epoch = Math.floor(slot / SLOTS_PER_EPOCH);
      const prevSlot = () => Math.max(0, slot - 1 - this.rng.int(SLOTS_PER_EPOCH));
      const headerAt = (s, proposerIndex) => ({
        slot: s,
        proposerIndex,
        parentRoot: this.root(),
        stateRoot: this.root(),
        bodyRoot: this.root(),
      });
      const propIdx = this.validatorIndex();
      const slashedSlot = prevSlot();
      const attSlot = prevSlot();
      const attData = this.attestationData(F, attSlot, Math.floor(attSlot / SLOTS_PER_EPOCH));
      const attData2 = {...attData, beaconBlockRoot: this.root()};
      const body = {
        randaoReveal: this.sig(),
        eth1Data: {depositRoot: this.root(), depositCount: this.rng.int(2_000_000), blockHash: this.root()},
        graffiti: this.rng.bytes(32),
        proposerSlashings: [
          {
            signedHeader1: {message: headerAt(slashedSlot, propIdx), signature: this.sig()},
            signedHeader2: {message: headerAt(slashedSlot, propIdx), signature: this.sig()},
          },
        ],
        attesterSlashings: [
          {attestation1: this.indexedAttestation(F, attData), attestation2: this.indexedAttestation(F, attData2)},
        ],
        attestations: Array.from({length: 3}, () => {
          const s = prevSlot();
          return {
            aggregationBits: this.bits(1 + this.rng.int(128)),
            data: this.attestationData(F, s, Math.floor(s / SLOTS_PER_EPOCH)),
            signature: this.sig(),
          };
        }),
        deposits: [
          {
            proof: Array.from({length: params.DEPOSIT_CONTRACT_TREE_DEPTH + 1}, () => this.root()),
            data: {
              pubkey: this.pk(),
              withdrawalCredentials: this.withdrawalCredentials(),
              amount: 32_000_000_000,
              signature: this.sig(),
            },
          },
        ],
        voluntaryExits: Array.from({length: 2}, () => ({
          message: {epoch: Math.max(0, epoch - this.rng.int(4)), validatorIndex: this.validatorIndex()},
          signature: this.sig(),
        })),
      };
      if (F === "ALTAIR") {
        body.syncAggregate = {
          syncCommitteeBits: this.bits(params.SYNC_COMMITTEE_SIZE),
          syncCommitteeSignature: this.sig(),
        };
      }
      const block = {slot, proposerIndex: this.validatorIndex(), parentRoot: this.root(), stateRoot: this.root(), body};
      // round-trip through the library to be sure the value is a well-formed SSZ value
      const bytes = types.BeaconBlock.serialize(this.fit(types.BeaconBlock, block));
      return types.BeaconBlock.deserialize(bytes);
    }

    withdrawalCredentials() {
      const wc = this.rng.bytes(32);
      if (this.rng.int(2) === 0) {
        wc[0] = 0;
      } else {
        wc.fill(0, 0, 12);
        wc[0] = this.rng.int(2) === 0 ? 1 : 2;
      }
      return wc;
    }

    // --- case emission -----------------------------------------------------------------------
    // A case signed by a fresh key from the seeded generator; returns its public key.
    emit(name, request, signingRoot) {
      const sk = blst.SecretKey.fromKeygen(this.rng.bytes(32));
      return this.emitWithKey(name, sk, request, signingRoot);
    }

    withFork(type, F, payloadKey, payloadJson) {
      const req = {type, fork_info: this.forkInfo(F).json};
      req[payloadKey] = payloadJson;
      return lowerHex(req);
    }

    generate() {
      const n = perCombo;
      const forksWithRange = FORKS.filter((F) => this.forkRange(F) !== null);
      const atLeast = (F, G) => FORKS.indexOf(F) >= FORKS.indexOf(G);

      // BLOCK (legacy, phase0 only)
      if (this.forkRange("PHASE0")) for (let i = 0; i < n; i++) this.blockCase("BLOCK", "PHASE0", i);
      // BLOCK_V2
      for (const F of forksWithRange) for (let i = 0; i < n; i++) this.blockCase("BLOCK_V2", F, i);
      for (const F of forksWithRange) for (let i = 0; i < n; i++) this.attestationCase(F, `${i}`, this.forkRange(F));
      for (const F of forksWithRange) for (let i = 0; i < n; i++) this.aggregationSlotCase(F, `${i}`, this.forkRange(F));
      for (const type of ["AGGREGATE_AND_PROOF", "AGGREGATE_AND_PROOF_V2"])
        for (const F of forksWithRange) for (let i = 0; i < n; i++) this.aggregateCase(type, F, i);
      for (const F of forksWithRange) for (let i = 0; i < n; i++) this.randaoCase(F, `${i}`, this.forkRange(F));
      for (const F of forksWithRange)
        for (let i = 0; i < n; i++) this.voluntaryExitCase(F, `${i}`, this.forkRange(F));
      const syncForks = forksWithRange.filter((F) => atLeast(F, "ALTAIR"));
      for (const F of syncForks) for (let i = 0; i < n; i++) this.syncMessageCase(F, `${i}`, this.forkRange(F));
      for (const F of syncForks) for (let i = 0; i < n; i++) this.syncSelectionCase(F, i);
      for (const F of syncForks) for (let i = 0; i < n; i++) this.contributionCase(F, i);
      for (let i = 0; i < n; i++) this.depositCase(i);
      for (let i = 0; i < n; i++) this.registrationCase(`${i}`, false);
      this.registrationCase(`${n}/eip55`, true);

      // Message epoch before fork_info.fork.epoch: previous_version must be used.
      for (const F of FORKS) {
        if (!this.forkRange(F)) continue;
        const pr = this.prevRange(F);
        if (!pr) continue;
        this.attestationCase(F, "0/prev", pr);
        this.randaoCase(F, "0/prev", pr);
        this.aggregationSlotCase(F, "0/prev", pr);
        this.voluntaryExitCase(F, "0/prev", pr);
        if (atLeast(FORKS[FORKS.indexOf(F) - 1], "ALTAIR")) this.syncMessageCase(F, "0/prev", pr);
      }
      return this.cases;
    }

    blockCase(type, F, i) {
      const r = this.forkRange(F);
      const slot = this.slotInEpoch(this.epochIn(r));
      if (this.config.getForkName(slot) !== LODESTAR_FORK[F]) fail(`slot ${slot} not in ${F}`);
      const types = ssz[LODESTAR_FORK[F]];
      const domain = this.domain(F, params.DOMAIN_BEACON_PROPOSER, st.computeEpochAtSlot(slot));
      let payload;
      let signingRoot;
      if (F === "PHASE0" || F === "ALTAIR") {
        const block = this.fullBlock(F, slot);
        signingRoot = this.signingRoot(types.BeaconBlock, block, lowerHex(types.BeaconBlock.toJson(block)), domain);
        const header = st.blockToHeader(this.config, block);
        if (!bytesEq(signingRoot, st.computeSigningRoot(ssz.phase0.BeaconBlockHeader, header, domain)))
          fail("block root != header root");
        payload = type === "BLOCK" ? types.BeaconBlock.toJson(block) : {version: F, block: types.BeaconBlock.toJson(block)};
      } else {
        // A random full block of the fork (real SSZ type, short lists), reduced to its header
        // with Lodestar's blockToHeader; the block root and header root must agree.
        const block = this.rand(types.BeaconBlock, 2);
        block.slot = slot;
        block.proposerIndex = this.validatorIndex();
        const header = st.blockToHeader(this.config, block);
        signingRoot = this.signingRoot(ssz.phase0.BeaconBlockHeader, header, lowerHex(ssz.phase0.BeaconBlockHeader.toJson(header)), domain);
        if (!bytesEq(signingRoot, st.computeSigningRoot(types.BeaconBlock, block, domain)))
          fail("block root != header root");
        payload = {version: F, block_header: ssz.phase0.BeaconBlockHeader.toJson(header)};
      }
      const payloadKey = type === "BLOCK" ? "block" : "beacon_block";
      this.emit(`${type}/${F}/${i}`, this.withFork(type, F, payloadKey, payload), signingRoot);
    }

    attestationCase(F, suffix, range) {
      const target = this.epochIn(range, 1);
      const data = this.attestationData(F, this.slotInEpoch(target), target);
      const domain = this.domain(F, params.DOMAIN_BEACON_ATTESTER, data.target.epoch);
      const signingRoot = this.signingRoot(ssz.phase0.AttestationData, data, lowerHex(ssz.phase0.AttestationData.toJson(data)), domain);
      this.emit(
        `ATTESTATION/${F}/${suffix}`,
        this.withFork("ATTESTATION", F, "attestation", ssz.phase0.AttestationData.toJson(data)),
        signingRoot
      );
    }

    aggregationSlotCase(F, suffix, range) {
      const slot = this.slotInEpoch(this.epochIn(range));
      const domain = this.domain(F, params.DOMAIN_SELECTION_PROOF, st.computeEpochAtSlot(slot));
      const signingRoot = this.signingRoot(ssz.Slot, slot, String(slot), domain);
      this.emit(
        `AGGREGATION_SLOT/${F}/${suffix}`,
        this.withFork("AGGREGATION_SLOT", F, "aggregation_slot", {slot: String(slot)}),
        signingRoot
      );
    }

    aggregateCase(type, F, i) {
      const slot = this.slotInEpoch(this.epochIn(this.forkRange(F), 1));
      const types = ssz[LODESTAR_FORK[F]];
      const value = {aggregatorIndex: this.validatorIndex(), aggregate: this.attestation(F, slot), selectionProof: this.sig()};
      const domain = this.domain(F, params.DOMAIN_AGGREGATE_AND_PROOF, st.computeEpochAtSlot(slot));
      const signingRoot = this.signingRoot(types.AggregateAndProof, value, lowerHex(types.AggregateAndProof.toJson(value)), domain);
      const json = types.AggregateAndProof.toJson(value);
      const payload = type === "AGGREGATE_AND_PROOF" ? json : {version: F, data: json};
      this.emit(`${type}/${F}/${i}`, this.withFork(type, F, "aggregate_and_proof", payload), signingRoot);
    }

    randaoCase(F, suffix, range) {
      const epoch = this.epochIn(range);
      const domain = this.domain(F, params.DOMAIN_RANDAO, epoch);
      const signingRoot = this.signingRoot(ssz.Epoch, epoch, String(epoch), domain);
      this.emit(
        `RANDAO_REVEAL/${F}/${suffix}`,
        this.withFork("RANDAO_REVEAL", F, "randao_reveal", {epoch: String(epoch)}),
        signingRoot
      );
    }

    voluntaryExitCase(F, suffix, range) {
      const exit = {epoch: this.epochIn(range), validatorIndex: this.validatorIndex()};
      const domain = this.voluntaryExitDomain(F, exit.epoch);
      const signingRoot = this.signingRoot(ssz.phase0.VoluntaryExit, exit, ssz.phase0.VoluntaryExit.toJson(exit), domain);
      this.emit(
        `VOLUNTARY_EXIT/${F}/${suffix}`,
        this.withFork("VOLUNTARY_EXIT", F, "voluntary_exit", ssz.phase0.VoluntaryExit.toJson(exit)),
        signingRoot
      );
    }

    syncMessageCase(F, suffix, range) {
      const slot = this.slotInEpoch(this.epochIn(range));
      const root = this.root();
      const domain = this.domain(F, params.DOMAIN_SYNC_COMMITTEE, st.computeEpochAtSlot(slot));
      const signingRoot = this.signingRoot(ssz.Root, root, bytesToHex(root), domain);
      this.emit(
        `SYNC_COMMITTEE_MESSAGE/${F}/${suffix}`,
        this.withFork("SYNC_COMMITTEE_MESSAGE", F, "sync_committee_message", {
          beacon_block_root: bytesToHex(root),
          slot: String(slot),
        }),
        signingRoot
      );
    }

    syncSelectionCase(F, i) {
      const data = {
        slot: this.slotInEpoch(this.epochIn(this.forkRange(F))),
        subcommitteeIndex: this.rng.int(params.SYNC_COMMITTEE_SUBNET_COUNT),
      };
      const domain = this.domain(F, params.DOMAIN_SYNC_COMMITTEE_SELECTION_PROOF, st.computeEpochAtSlot(data.slot));
      const signingRoot = this.signingRoot(ssz.altair.SyncAggregatorSelectionData, data, ssz.altair.SyncAggregatorSelectionData.toJson(data), domain);
      this.emit(
        `SYNC_COMMITTEE_SELECTION_PROOF/${F}/${i}`,
        this.withFork(
          "SYNC_COMMITTEE_SELECTION_PROOF",
          F,
          "sync_aggregator_selection_data",
          ssz.altair.SyncAggregatorSelectionData.toJson(data)
        ),
        signingRoot
      );
    }

    contributionCase(F, i) {
      const slot = this.slotInEpoch(this.epochIn(this.forkRange(F)));
      const value = {
        aggregatorIndex: this.validatorIndex(),
        contribution: {
          slot,
          beaconBlockRoot: this.root(),
          subcommitteeIndex: this.rng.int(params.SYNC_COMMITTEE_SUBNET_COUNT),
          aggregationBits: this.bits(params.SYNC_COMMITTEE_SIZE / params.SYNC_COMMITTEE_SUBNET_COUNT),
          signature: this.sig(),
        },
        selectionProof: this.sig(),
      };
      const domain = this.domain(F, params.DOMAIN_CONTRIBUTION_AND_PROOF, st.computeEpochAtSlot(slot));
      const signingRoot = this.signingRoot(ssz.altair.ContributionAndProof, value, lowerHex(ssz.altair.ContributionAndProof.toJson(value)), domain);
      this.emit(
        `SYNC_COMMITTEE_CONTRIBUTION_AND_PROOF/${F}/${i}`,
        this.withFork(
          "SYNC_COMMITTEE_CONTRIBUTION_AND_PROOF",
          F,
          "contribution_and_proof",
          ssz.altair.ContributionAndProof.toJson(value)
        ),
        signingRoot
      );
    }

    depositCase(i) {
      // The deposit is for the signing key itself (as a real deposit would be): derive the key first.
      const ikm = this.rng.bytes(32);
      const sk = blst.SecretKey.fromKeygen(ikm);
      const msg = {
        pubkey: sk.toPublicKey().toBytes(),
        withdrawalCredentials: this.withdrawalCredentials(),
        amount: this.rng.pick([32_000_000_000, 1_000_000_000, 2_048_000_000_000, 1_000_000_000 + this.rng.int(2 ** 40)]),
      };
      const domain = st.computeDomain(params.DOMAIN_DEPOSIT, this.config.GENESIS_FORK_VERSION, st.ZERO_HASH);
      const signingRoot = this.signingRoot(ssz.phase0.DepositMessage, msg, lowerHex(ssz.phase0.DepositMessage.toJson(msg)), domain);
      const request = lowerHex({
        type: "DEPOSIT",
        deposit: {
          ...ssz.phase0.DepositMessage.toJson(msg),
          genesis_fork_version: bytesToHex(this.config.GENESIS_FORK_VERSION),
        },
      });
      this.emitWithKey(`DEPOSIT/NONE/${i}`, sk, request, signingRoot);
    }

    registrationCase(suffix, eip55) {
      const sk = blst.SecretKey.fromKeygen(this.rng.bytes(32));
      const reg = {
        feeRecipient: this.rng.bytes(20),
        gasLimit: this.rng.pick([30_000_000, 36_000_000, 45_000_000, 60_000_000]),
        timestamp: 1_606_824_023 + this.rng.int(400_000_000),
        pubkey: sk.toPublicKey().toBytes(),
      };
      const domain = st.computeDomain(params.DOMAIN_APPLICATION_BUILDER, this.config.GENESIS_FORK_VERSION, st.ZERO_HASH);
      const signingRoot = this.signingRoot(ssz.bellatrix.ValidatorRegistrationV1, reg, ssz.bellatrix.ValidatorRegistrationV1.toJson(reg), domain);
      const json = ssz.bellatrix.ValidatorRegistrationV1.toJson(reg); // fee_recipient is EIP-55 here
      let request = {type: "VALIDATOR_REGISTRATION", validator_registration: json};
      if (!eip55) request = lowerHex(request);
      else request.validator_registration.pubkey = request.validator_registration.pubkey.toLowerCase();
      this.emitWithKey(`VALIDATOR_REGISTRATION/NONE/${suffix}`, sk, request, signingRoot);
    }

    emitWithKey(name, sk, request, signingRoot) {
      const pk = sk.toPublicKey();
      const sig = sk.sign(signingRoot);
      if (!blst.verify(signingRoot, pk, sig)) fail(`${name}: self-verification failed`);
      this.cases.push({
        name,
        secret_key: bytesToHex(sk.toBytes()),
        pubkey: bytesToHex(pk.toBytes()),
        request,
        signing_root: bytesToHex(signingRoot),
        signature: bytesToHex(sig.toBytes()),
      });
      return pk;
    }
  }

  const report = {packages, networks: {}, counts: {}};

  for (const network of networks) {
    let chainConfig;
    let genesis;
    if (network === "holesky") {
      chainConfig = holeskyNetworks.holeskyChainConfig;
      genesis = holeskyNetworks.genesisData.holesky;
    } else {
      chainConfig = lodestarNetworks.networksChainConfig[network];
      genesis = lodestarNetworks.genesisData[network];
    }
    if (!chainConfig || !genesis) fail(`no Lodestar config for ${network}`);
    if (chainConfig.PRESET_BASE !== params.ACTIVE_PRESET)
      fail(`${network} needs preset ${chainConfig.PRESET_BASE}, worker has ${params.ACTIVE_PRESET}`);

    const config = createChainForkConfig(chainConfig);
    const gvr = hexToBytes(genesis.genesisValidatorsRoot);
    const beaconConfig = createBeaconConfig(chainConfig, gvr);
    const gen = new NetworkGenerator({network, config, beaconConfig, gvr});
    const cases = gen.generate();

    const doc = {generator: GENERATOR_NAME, packages, seed, network, cases};
    fs.mkdirSync(outDir, {recursive: true});
    fs.writeFileSync(path.join(outDir, `${network}.json`), `${JSON.stringify(doc, null, 2)}\n`);
    report.counts[network] = cases.length;
    report.networks[network] = networkInfo(config, genesis);
  }
  process.stdout.write(JSON.stringify(report));

}

// ---------------------------------------------------------------------------------------------
// utilities (no consensus logic here)

// Deterministic byte stream: SHA-256 in counter mode over a label.
class Rng {
  constructor(label) {
    this.key = createHash("sha256").update(label).digest();
    this.counter = 0;
    this.buf = Buffer.alloc(0);
  }
  bytes(n) {
    while (this.buf.length < n) {
      const c = Buffer.alloc(8);
      c.writeBigUInt64BE(BigInt(this.counter++));
      this.buf = Buffer.concat([this.buf, createHash("sha256").update(this.key).update(c).digest()]);
    }
    const out = new Uint8Array(this.buf.subarray(0, n));
    this.buf = this.buf.subarray(n);
    return out;
  }
  // uniform integer in [0, n), n <= 2^48
  int(n) {
    if (!(n >= 1 && n <= 2 ** 48)) throw Error(`bad range ${n}`);
    const lim = Math.floor(2 ** 48 / n) * n;
    for (;;) {
      const b = this.bytes(6);
      let x = 0;
      for (const v of b) x = x * 256 + v;
      if (x < lim) return x % n;
    }
  }
  intBetween(lo, hi) {
    return lo + this.int(hi - lo + 1);
  }
  pick(arr) {
    return arr[this.int(arr.length)];
  }
}

function bytesToHex(b) {
  return `0x${Buffer.from(b).toString("hex")}`;
}
function hexToBytes(h) {
  return new Uint8Array(Buffer.from(h.replace(/^0x/, ""), "hex"));
}
function bytesEq(a, b) {
  return Buffer.from(a).equals(Buffer.from(b));
}
function bytesToBigintLE(b) {
  let x = 0n;
  for (let i = b.length - 1; i >= 0; i--) x = (x << 8n) | BigInt(b[i]);
  return x;
}
// Lower-case every 0x-hex string (Lodestar emits EIP-55 checksummed execution addresses).
function lowerHex(v) {
  if (typeof v === "string") return /^0x[0-9a-fA-F]*$/.test(v) ? v.toLowerCase() : v;
  if (Array.isArray(v)) return v.map(lowerHex);
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, lowerHex(x)]));
  return v;
}
function parseSeed(s) {
  if (!/^\d+$/.test(String(s))) fail(`--seed must be a non-negative integer, got ${s}`);
  const n = BigInt(s);
  // recorded as a JSON number when exactly representable, else as a decimal string
  return n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : n.toString();
}
function readPackageVersions() {
  const nm = path.join(GENERATOR_DIR, "node_modules");
  const v = (p) => JSON.parse(fs.readFileSync(path.join(nm, p, "package.json"), "utf8")).version;
  return {
    "@lodestar/types": v("@lodestar/types"),
    "@lodestar/config": v("@lodestar/config"),
    "@lodestar/params": v("@lodestar/params"),
    "@lodestar/state-transition": v("@lodestar/state-transition"),
    "@lodestar/utils": v("@lodestar/utils"),
    "@chainsafe/ssz": v("@chainsafe/ssz"),
    "@chainsafe/blst": v("@chainsafe/blst"),
    "lodestar-config-holesky": `@lodestar/config@${v("lodestar-config-holesky")}`,
  };
}
function fail(msg) {
  console.error(`generate.mjs: ${msg}`);
  process.exit(1);
}

// Entry point (at the end so that all classes above are initialised).
if (args.worker) {
  await runWorker();
} else {
  runMain();
}
