-- Argo CD health check for wasmfleet.dev/WasmService.
-- Healthy: the operator has seen the latest spec and every replica serves the current revision.
-- Progressing: not yet observed, or replicas are still starting or rolling out.
-- Degraded: a replica fails, the module cannot be resolved or pulled, or replicas cannot be placed.
-- Suspended: scaled to zero replicas.
local hs = {}
local spec = obj.spec or {}
local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the service"
  return hs
end
local generation = (obj.metadata and obj.metadata.generation) or 0
if status.observedGeneration == nil or status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
local conditions = {}
if status.conditions ~= nil then
  for _, condition in ipairs(status.conditions) do
    conditions[condition.type] = condition
  end
end
local replicas = spec.replicas
if replicas == nil then
  replicas = 1
end
if replicas == 0 then
  hs.status = "Suspended"
  hs.message = "Scaled to zero replicas"
  return hs
end
local degraded = conditions["Degraded"]
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = (degraded.reason or "Degraded") .. ": " .. (degraded.message or "")
  return hs
end
local ready = conditions["Ready"]
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "All replicas ready"
  return hs
end
hs.status = "Progressing"
if ready ~= nil and ready.message ~= nil then
  hs.message = ready.message
else
  hs.message = "Waiting for replicas to become ready"
end
return hs
