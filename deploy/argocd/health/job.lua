-- Argo CD health of a slmops FineTuneJob or OptimizeJob (Lua 5.1, as Argo CD runs it).
--   Suspended    spec.suspend is true
--   Progressing  not yet observed by the operator, Pending, Queued or Running
--   Healthy      Succeeded
--   Degraded     Failed or Cancelled
local hs = {}
local function message(status, default)
  if status ~= nil and status.message ~= nil and status.message ~= "" then
    return status.message
  end
  return default
end

if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "spec.suspend is true"
  return hs
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local phase = status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = message(status, "succeeded")
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = message(status, "failed")
elseif phase == "Cancelled" then
  hs.status = "Degraded"
  hs.message = message(status, "cancelled")
else
  hs.status = "Progressing"
  local text = phase
  if status.progress ~= nil and status.progress.percent ~= nil then
    text = text .. " (" .. tostring(status.progress.percent) .. "%)"
  end
  hs.message = text .. ": " .. message(status, "")
end
return hs
