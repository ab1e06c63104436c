-- Argo CD health check for LoRAJob (finetune.lora-operator.io). Without one, Argo CD counts a
-- LoRAJob as Healthy whatever happened to it. Install it in argocd-cm under
-- resource.customizations.health.finetune.lora-operator.io_LoRAJob (charts/lora-operator/argocd/README.md).
-- It reads the kstatus conditions the operator writes at every status update (Ready,
-- Reconciling, Stalled; docs/gitops.md) and falls back on status.phase for objects written by an
-- operator that predates them. Lua 5.1 (gopher-lua), no libraries.
local hs = {}

local function find(conditions, type_)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function said(c, fallback)
  if c == nil then
    return fallback
  end
  local reason = c.reason or ""
  local message = c.message or ""
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  end
  if reason ~= "" then
    return reason
  end
  if message ~= "" then
    return message
  end
  return fallback
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the lora-operator to reconcile this LoRAJob"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
local observed = status.observedGeneration
if generation ~= nil and observed ~= nil and observed ~= generation then
  hs.status = "Progressing"
  hs.message = "the operator has not seen generation " .. tostring(generation) .. " yet"
  return hs
end

local conditions = status.conditions
local ready = find(conditions, "Ready")
local reconciling = find(conditions, "Reconciling")
local stalled = find(conditions, "Stalled")

if status.phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = said(ready, status.message or "spec.suspend is true")
  return hs
end

if ready == nil and reconciling == nil and stalled == nil then
  -- an operator older than the kstatus conditions: the phase says it all
  if status.phase == "Succeeded" then
    hs.status = "Healthy"
  elseif status.phase == "Failed" then
    hs.status = "Degraded"
  else
    hs.status = "Progressing"
  end
  hs.message = status.message or status.phase
  return hs
end

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = said(stalled, "stalled")
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = said(ready, "ready")
  return hs
end

hs.status = "Progressing"
hs.message = said(reconciling, status.message or status.phase)
return hs
