/**
 * `sigil.admin.v1.AgentAdmin`: attested agents (list, show, ban, evict,
 * count) and join tokens; a token's chosen agent ID must lie under
 * `/spire/agent/`. A join token is a bearer credential: it is returned
 * to the caller once and never logged; audit records carry the agent ID it
 * will give instead (with the token blanked out of the default
 * `…/join_token/<token>` form).
 */
import { randomBytes } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import {
  BanAgentResponseSchema,
  CountAgentsResponseSchema,
  CreateJoinTokenResponseSchema,
  EvictAgentResponseSchema,
  ListAgentsResponseSchema,
  type AgentAdmin,
  type BanAgentRequest,
  type BanAgentResponse,
  type CountAgentsRequest,
  type CountAgentsResponse,
  type CreateJoinTokenRequest,
  type CreateJoinTokenResponse,
  type EvictAgentRequest,
  type EvictAgentResponse,
  type GetAgentRequest,
  type ListAgentsRequest,
  type ListAgentsResponse,
} from "../../../proto/gen/sigil/admin/v1/admin_pb.js";
import type { Agent as WireAgent } from "../../../proto/gen/sigil/types/v1/types_pb.js";
import { checkJoinTokenSyntax, joinTokenAgentId } from "../../../plugins/nodeattestor/join_token/server.js";
import { SigilError, isSigilError } from "../../../spiffe/errors.js";
import type { GrpcServiceImplementation } from "../../../spiffe/grpc/service.js";
import type { AgentFilter } from "../../datastore/index.js";
import type { DatastoreParentResolver } from "../parent-resolver.js";
import type { UnaryWrapper } from "../unary.js";
import { wireAgent } from "../wire.js";
import { invalidField, pageRequest, spiffeIdField, ttlField, unixSeconds, withPageToken, type AdminApiDeps } from "./common.js";

type AgentMethods = (typeof AgentAdmin)["method"];

/** Join-token lifetime when the request gives none (SPIRE's default). */
export const DEFAULT_JOIN_TOKEN_TTL_SECONDS = 600;
/** Longest join-token lifetime: a bearer credential should not live for months. */
export const MAX_JOIN_TOKEN_TTL_SECONDS = 30 * 24 * 3600;
/** Shortest operator-chosen token: anything shorter could be guessed. Generated tokens are 32 hex digits (128 bits). */
export const MIN_JOIN_TOKEN_LENGTH = 16;

/** A fresh join token: 128 random bits as 32 lowercase hex digits (within the `A-Z a-z 0-9 . _ -` charset). */
export function generateJoinToken(): string {
  return randomBytes(16).toString("hex");
}

/** Stands for the token in audited default agent IDs (a valid path segment, so the ID stays parseable). */
const REDACTED_TOKEN = "REDACTED";

function notFound(id: string): SigilError {
  return new SigilError("ERR_NOT_FOUND", `spiffe_id: agent ${id} not found`);
}

/** Builds the AgentAdmin service implementation. */
export function createAgentAdmin(deps: AdminApiDeps, parents: DatastoreParentResolver, unary: UnaryWrapper): GrpcServiceImplementation<AgentMethods> {
  /** Runs a datastore call on one agent, turning its NOT_FOUND into one naming the agent. */
  async function onAgent<T>(id: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      if (isSigilError(e, "ERR_NOT_FOUND")) throw notFound(id);
      throw e;
    }
  }

  return {
    listAgents: unary<ListAgentsRequest, ListAgentsResponse>("ListAgents", async (req, _call, audit) => {
      if (!["", "true", "false"].includes(req.byBanned)) throw invalidField("by_banned", `must be "true", "false" or empty, got ${JSON.stringify(req.byBanned)}`);
      const filter: AgentFilter = {
        ...(req.byAttestationType ? { attestationType: req.byAttestationType } : {}),
        ...(req.byBanned ? { banned: req.byBanned === "true" } : {}),
      };
      const page = pageRequest(req.pageSize, req.pageToken);
      const result = await withPageToken(req.pageToken, () => deps.datastore.listAgents({ filter, ...page }));
      audit.details.returned = result.items.length;
      return { res: create(ListAgentsResponseSchema, { agents: result.items.map(wireAgent), nextPageToken: result.nextPageToken ?? "" }) };
    }),

    getAgent: unary<GetAgentRequest, WireAgent>("GetAgent", async (req, _call, audit) => {
      audit.details.agent_id = req.spiffeId;
      const id = spiffeIdField("spiffe_id", req.spiffeId).toString();
      const agent = await deps.datastore.getAgent(id);
      if (!agent) throw notFound(id);
      return { res: wireAgent(agent) };
    }),

    banAgent: unary<BanAgentRequest, BanAgentResponse>("BanAgent", async (req, _call, audit) => {
      audit.details.agent_id = req.spiffeId;
      const id = spiffeIdField("spiffe_id", req.spiffeId).toString();
      await onAgent(id, () => deps.datastore.banAgent(id));
      deps.log.info({ agent_id: id }, "agent banned");
      return { res: create(BanAgentResponseSchema, {}) };
    }),

    evictAgent: unary<EvictAgentRequest, EvictAgentResponse>("EvictAgent", async (req, _call, audit) => {
      audit.details.agent_id = req.spiffeId;
      const id = spiffeIdField("spiffe_id", req.spiffeId).toString();
      await onAgent(id, () => deps.datastore.deleteAgent(id));
      deps.log.info({ agent_id: id }, "agent evicted");
      return { res: create(EvictAgentResponseSchema, {}) };
    }),

    countAgents: unary<CountAgentsRequest, CountAgentsResponse>("CountAgents", async () => {
      const count = await deps.datastore.countAgents();
      return { res: create(CountAgentsResponseSchema, { count: BigInt(count) }) };
    }),

    createJoinToken: unary<CreateJoinTokenRequest, CreateJoinTokenResponse>("CreateJoinToken", async (req, _call, audit) => {
      const ttlMs = ttlField("ttl", req.ttl, DEFAULT_JOIN_TOKEN_TTL_SECONDS * 1000, MAX_JOIN_TOKEN_TTL_SECONDS * 1000);
      let token: string;
      if (req.token) {
        try {
          checkJoinTokenSyntax(req.token);
        } catch (e) {
          throw invalidField("token", isSigilError(e) ? e.message : String(e), e);
        }
        if (req.token.length < MIN_JOIN_TOKEN_LENGTH) throw invalidField("token", `must be at least ${MIN_JOIN_TOKEN_LENGTH} characters (a short token can be guessed); leave it empty to generate one`);
        token = req.token;
      } else {
        token = generateJoinToken();
      }
      audit.details.token_source = req.token ? "given" : "generated";
      let agentId: string;
      if (req.agentId) {
        agentId = spiffeIdField("agent_id", req.agentId, { issuableIn: deps.trustDomain, kind: "agent" }).toString();
      } else {
        agentId = joinTokenAgentId(deps.trustDomain, token);
      }
      // The default agent ID embeds the token: audit it with the token blanked.
      audit.details.agent_id = req.agentId ? agentId : joinTokenAgentId(deps.trustDomain, REDACTED_TOKEN);
      const expiresAt = new Date(deps.now().getTime() + ttlMs);
      try {
        await deps.datastore.createJoinToken({ token, expiresAt, ...(req.agentId ? { agentId } : {}) });
      } catch (e) {
        if (isSigilError(e, "ERR_ALREADY_EXISTS")) throw new SigilError("ERR_ALREADY_EXISTS", "token: a join token with this value already exists", { cause: e });
        throw e;
      }
      parents.rememberJoinToken(agentId, expiresAt);
      audit.details.expires_at = expiresAt.toISOString();
      return { res: create(CreateJoinTokenResponseSchema, { token, expiresAt: unixSeconds(expiresAt), agentId }) };
    }),
  };
}
