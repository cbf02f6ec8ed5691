// The tests' IAM evaluator: AWS's policy evaluation logic as @cloud-copilot/iam-simulate
// implements it (every condition operator, explicit deny over allow). One JSON request per
// line on stdin, one JSON answer per line on stdout:
//   {"identity": POLICY | null, "resourcePolicy": POLICY | null, "principal": ARN,
//    "action": "s3:GetObject", "resource": ARN or "*", "account": "123456789012",
//    "context": {"s3:prefix": "..."}}
//   -> {"result": "Allowed" | "ImplicitlyDenied" | "ExplicitlyDenied"} or {"error": ...}
// A line holding a JSON array of requests gets one line back: the array of their answers (the
// policy mutation run asks a mutant's hundreds of requests at once).
import { createInterface } from 'node:readline'
import { runSimulation } from '@cloud-copilot/iam-simulate'

async function answer(asked) {
  try {
    const simulation = {
      identityPolicies: asked.identity ? [{ name: 'policy', policy: asked.identity }] : [],
      serviceControlPolicies: [],
      resourceControlPolicies: [],
      resourcePolicy: asked.resourcePolicy ?? undefined,
      request: {
        principal: asked.principal,
        action: asked.action,
        resource: { resource: asked.resource, accountId: asked.account },
        contextVariables: asked.context ?? {},
      },
    }
    const response = await runSimulation(simulation, {})
    if (response.resultType === 'error') {
      return { error: response.errors }
    }
    // A context key the action does not take is dropped by the simulator: say so, so that the
    // caller does not mistake a request it never evaluated as asked for a denial.
    const results = response.resultType === 'single' ? [response.result] : response.results
    const ignored = results.flatMap((r) => r.ignoredContextKeys ?? [])
    return { result: response.overallResult, ignored: [...new Set(ignored)] }
  } catch (exc) {
    return { error: String(exc && exc.stack ? exc.stack : exc) }
  }
}

const lines = createInterface({ input: process.stdin, terminal: false })
for await (const line of lines) {
  if (!line.trim()) continue
  let answered
  try {
    const asked = JSON.parse(line)
    answered = Array.isArray(asked) ? await Promise.all(asked.map(answer)) : await answer(asked)
  } catch (exc) {
    answered = { error: String(exc && exc.stack ? exc.stack : exc) }
  }
  process.stdout.write(JSON.stringify(answered) + '\n')
}
