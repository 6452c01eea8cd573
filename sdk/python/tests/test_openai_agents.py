"""The OpenAI Agents SDK (the real `openai-agents` from PyPI, pinned in tests/requirements.txt)
with its own `ScriptedModel`: every function tool call is decided by a real `ztinfra serve` on
the examples/openai-agents policies, approvals are the SDK's interruptions, and hosted MCP
approval requests are answered by policy."""

import asyncio
import json

from agents import Agent, HostedMCPTool, Runner, function_tool, set_tracing_disabled
from agents.testing import ScriptedModel, assistant_message, function_call
from conftest import closed_port_url, walk_through
from openai.types.responses.response_output_item import McpApprovalRequest

from ztinfra import AsyncClient, Client, ToolGuard
from ztinfra.openai_agents import AgentsGuard

set_tracing_disabled(True)
ran = []


@function_tool
def lookup_customer(customer_id: str) -> str:
    """Look a customer up."""
    ran.append(("lookup_customer", customer_id))
    return f"customer {customer_id}"


@function_tool
def issue_credit(customer_id: str, amount: int) -> str:
    """Issue a credit note."""
    ran.append(("issue_credit", customer_id))
    return f"credited {amount} to {customer_id}"


@function_tool
def export_customers() -> str:
    """Export every customer."""
    ran.append(("export_customers", ""))
    return "everyone"


def guard_for(service, url=None):
    token = Client(service.base, service.broker).start_session("support-bot", on_behalf_of="dana").access_token
    return AgentsGuard(ToolGuard(aclient=AsyncClient(url or service.base, token, retries=0, timeout=2),
                                 namespace="support", resource="customer_id"))


def agent_with(zt, *steps, tools=None):
    model = ScriptedModel([*steps, [assistant_message("done")]])
    agent = Agent(name="support", model=model,
                  tools=tools if tools is not None else zt.protect([lookup_customer, issue_credit, export_customers]))
    return agent, model


def outputs(result):
    return [item.output for item in result.new_items if item.type == "tool_call_output_item"]


def test_allowed_calls_run_and_forbidden_ones_are_rejected_with_the_reason(agents_service):
    ran.clear()
    zt = guard_for(agents_service)
    agent, model = agent_with(zt, [function_call("lookup_customer", {"customer_id": "c-1"}, call_id="a")],
                              [function_call("export_customers", {}, call_id="b")])
    result = asyncio.run(Runner.run(agent, "go"))
    assert ran == [("lookup_customer", "c-1")]
    assert not result.interruptions and result.final_output == "done"
    lookup, export = outputs(result)
    assert lookup == "customer c-1"
    assert "`export_customers` was not run: denied by policy" in export and "never exported in bulk" in export
    # The model read the rejection as the call's output.
    assert "never exported in bulk" in json.dumps(model.last_call.input, default=str)
    # One decision a call: needs_approval's decision is the one the guardrail applies.
    assert agents_service.decided() == ["support.lookup_customer", "support.export_customers"]


def test_a_call_that_needs_approval_is_an_interruption_settled_as_approvers_answer(agents_service):
    ran.clear()
    zt = guard_for(agents_service)
    agent, _ = agent_with(zt, [function_call("issue_credit", {"customer_id": "c-2", "amount": 50}, call_id="c")])

    async def run():
        result = await Runner.run(agent, "go")
        (item,) = result.interruptions
        assert item.tool_name == "issue_credit" and ran == []
        ticket = zt.approval_of(item)
        assert ticket.group == "support-leads" and [a["id"] for a in agents_service.pending()] == [ticket.id]

        # Unanswered: settling leaves it interrupted.
        result = await Runner.run(agent, await zt.settle(result))
        assert [zt.approval_of(i).id for i in result.interruptions] == [ticket.id] and ran == []

        agents_service.answer(ticket.id)
        result = await Runner.run(agent, await zt.settle(result, wait=5))
        return ticket, result

    ticket, result = asyncio.run(run())
    assert ran == [("issue_credit", "c-2")] and not result.interruptions
    assert "credited 50 to c-2" in outputs(result)
    assert Client(agents_service.base, agents_service.auditor).approval(ticket.id).raw["used_by"]


def test_approving_in_the_sdk_alone_runs_nothing_and_a_denial_is_the_model_s_to_read(agents_service):
    ran.clear()
    zt = guard_for(agents_service)

    async def run():
        agent, _ = agent_with(zt, [function_call("issue_credit", {"customer_id": "c-3", "amount": 9}, call_id="d")])
        result = await Runner.run(agent, "go")
        state = result.to_state()
        state.approve(result.interruptions[0])  # the app's own approval: ZT-Infra's approvers have not
        alone = await Runner.run(agent, state)

        agent, _ = agent_with(zt, [function_call("issue_credit", {"customer_id": "c-4", "amount": 9}, call_id="e")])
        result = await Runner.run(agent, "go")
        ticket = zt.approval_of(result.interruptions[0])
        agents_service.answer(ticket.id, "deny", "not this customer")
        return alone, ticket, await Runner.run(agent, await zt.settle(result))

    alone, ticket, denied = asyncio.run(run())
    assert ran == []
    (output,) = outputs(alone)
    assert "`issue_credit` was not run" in output and "pending" in output
    (output,) = outputs(denied)
    assert f"approval {ticket.id} was denied: not this customer" in output


def test_hosted_mcp_approval_requests_are_answered_by_policy(agents_service):
    zt = guard_for(agents_service)
    hosted = HostedMCPTool(tool_config={"type": "mcp", "server_label": "crm", "server_url": "https://crm.invalid/mcp",
                                        "require_approval": "always"},
                           on_approval_request=zt.on_mcp_approval_request)

    def request(n, name, args):
        return McpApprovalRequest(id=f"mcpr-{n}", arguments=json.dumps(args), name=name, server_label="crm",
                                  type="mcp_approval_request")

    # No policy permits `support.crm.delete_contact`: not approved, with the reason.
    agent, _ = agent_with(zt, [request(1, "delete_contact", {"customer_id": "c-5"})], tools=[hosted])
    result = asyncio.run(Runner.run(agent, "go"))
    (response,) = [i.raw_item for i in result.new_items if i.type == "mcp_approval_response_item"]
    assert response["approve"] is False and "deny by default" in response["reason"]
    assert agents_service.decided() == ["support.crm.delete_contact"]


def test_without_a_decision_no_tool_runs(agents_service):
    ran.clear()
    zt = guard_for(agents_service, url=closed_port_url())
    agent, _ = agent_with(zt, [function_call("lookup_customer", {"customer_id": "c-6"}, call_id="f")])
    result = asyncio.run(Runner.run(agent, "go"))
    (output,) = outputs(result)
    assert ran == [] and "no decision could be had" in output and not result.interruptions


def test_the_example_runs_as_the_readme_says(agents_service):
    before, waiting, out = walk_through(agents_service, "openai-agents", "goodwill credit")
    assert before == [] and waiting.startswith("waiting: issue_credit needs approval ")
    assert "tool output: credit note of 50 EUR issued to c-42" in out
    assert "tool output: `export_customers` was not run: denied by policy" in out
    assert out.rstrip().endswith("ran: lookup_customer(c-42), issue_credit(c-42, 50)")
