"""LangGraph (the real `langgraph` from PyPI, pinned in tests/requirements.txt) with a scripted
model: every tool call of a `ToolNode` is decided by a real `ztinfra serve` on the
examples/langgraph policies before it runs."""

import asyncio

from conftest import closed_port_url, walk_through
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import tools_condition
from langgraph.types import Command

from ztinfra import AsyncClient, Client, ToolGuard
from ztinfra.langgraph import guarded_tool_node

ran = []


@tool
def read_invoice(invoice_id: str) -> str:
    """Read an invoice."""
    ran.append(("read_invoice", invoice_id))
    return f"invoice {invoice_id}"


@tool
def refund_invoice(invoice_id: str, amount: int) -> str:
    """Refund an invoice."""
    ran.append(("refund_invoice", invoice_id))
    return f"refunded {amount} on {invoice_id}"


@tool
def delete_invoice(invoice_id: str) -> str:
    """Delete an invoice."""
    ran.append(("delete_invoice", invoice_id))
    return f"deleted {invoice_id}"


def calls(*steps):
    """A model that makes these tool calls, one a turn, then answers "done"."""
    script = [AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": f"call-{n}"}])
              for n, (name, args) in enumerate(steps)] + [AIMessage(content="done")]

    def model(state: MessagesState):
        return {"messages": [script[sum(isinstance(m, AIMessage) for m in state["messages"])]]}

    return model


def graph(guard, model):
    builder = StateGraph(MessagesState)
    builder.add_node("model", model)
    builder.add_node("tools", guarded_tool_node([read_invoice, refund_invoice, delete_invoice], guard))
    builder.add_edge(START, "model")
    builder.add_conditional_edges("model", tools_condition)
    builder.add_edge("tools", "model")
    return builder.compile(checkpointer=InMemorySaver())


def session_token(service):
    return Client(service.base, service.broker).start_session("billing-bot", on_behalf_of="dana").access_token


def tool_messages(result):
    return {m.name: m for m in result["messages"] if isinstance(m, ToolMessage)}


CONFIG = {"configurable": {"thread_id": "t"}}
START_MESSAGE = {"messages": [HumanMessage("go")]}


def test_allowed_calls_run_and_denied_ones_come_back_as_tool_messages(langgraph_service):
    ran.clear()
    guard = ToolGuard(Client(langgraph_service.base, session_token(langgraph_service)),
                      namespace="billing", resource="invoice_id")
    result = graph(guard, calls(("read_invoice", {"invoice_id": "inv-7"}),
                                ("delete_invoice", {"invoice_id": "inv-7"}))).invoke(START_MESSAGE, CONFIG)
    assert ran == [("read_invoice", "inv-7")]
    messages = tool_messages(result)
    assert messages["read_invoice"].status == "success"
    denied = messages["delete_invoice"]
    assert denied.status == "error" and "denied by policy" in denied.content and "deny by default" in denied.content
    assert denied.artifact["ztinfra"]["decision"] == "deny" and denied.artifact["ztinfra"]["decision_id"]
    assert result["messages"][-1].content == "done"  # the graph went on


def test_an_approval_interrupts_the_graph_and_the_resume_runs_the_call_once_approvers_approved(langgraph_service):
    ran.clear()
    token = session_token(langgraph_service)
    guard = ToolGuard(Client(langgraph_service.base, token), namespace="billing", resource="invoice_id")
    app = graph(guard, calls(("refund_invoice", {"invoice_id": "inv-7", "amount": 120})))
    result = app.invoke(START_MESSAGE, CONFIG)
    (interrupted,) = result["__interrupt__"]
    request = interrupted.value
    # LangChain's human-in-the-loop request shape, and the approval it waits for.
    assert request["action_requests"] == [{"name": "refund_invoice", "args": {"invoice_id": "inv-7", "amount": 120},
                                           "description": request["action_requests"][0]["description"]}]
    assert request["review_configs"] == [{"action_name": "refund_invoice", "allowed_decisions": ["approve", "reject"]}]
    zt = request["ztinfra"]
    assert (zt["action"], zt["resource"], zt["group"], zt["status"]) == ("billing.refund_invoice", "inv-7", "finance", "pending")
    assert [a["id"] for a in langgraph_service.pending()] == [zt["approval_id"]]
    assert ran == []

    langgraph_service.answer(zt["approval_id"])
    result = app.invoke(Command(resume={"decisions": [{"type": "approve"}]}), CONFIG)
    assert ran == [("refund_invoice", "inv-7")]
    assert tool_messages(result)["refund_invoice"].status == "success"
    assert result["messages"][-1].content == "done"
    # On record: the allow names the approval it used.
    approval = Client(langgraph_service.base, langgraph_service.auditor).approval(zt["approval_id"])
    assert approval.raw["used_by"]


def test_the_resume_value_alone_approves_nothing_and_a_rejection_wins(langgraph_service):
    ran.clear()
    guard = ToolGuard(Client(langgraph_service.base, session_token(langgraph_service)),
                      namespace="billing", resource="invoice_id")
    # Resumed "approve" while approvers have not answered: still not run, and the model is told.
    app = graph(guard, calls(("refund_invoice", {"invoice_id": "inv-1", "amount": 5})))
    app.invoke(START_MESSAGE, CONFIG)
    result = app.invoke(Command(resume={"decisions": [{"type": "approve"}]}), CONFIG)
    message = tool_messages(result)["refund_invoice"]
    assert message.status == "error" and "pending" in message.content and ran == []

    # Approvers approved, the reviewer in the graph rejects: not run.
    app = graph(guard, calls(("refund_invoice", {"invoice_id": "inv-2", "amount": 5})))
    zt = app.invoke(START_MESSAGE, CONFIG)["__interrupt__"][0].value["ztinfra"]
    langgraph_service.answer(zt["approval_id"])
    result = app.invoke(Command(resume={"decisions": [{"type": "reject", "message": "wrong customer"}]}), CONFIG)
    message = tool_messages(result)["refund_invoice"]
    assert message.status == "error" and "wrong customer" in message.content and ran == []

    # A resume value that means nothing: not run.
    app = graph(guard, calls(("refund_invoice", {"invoice_id": "inv-3", "amount": 5})))
    app.invoke(START_MESSAGE, CONFIG)
    result = app.invoke(Command(resume="sure, whatever"), CONFIG)
    assert "not understood" in tool_messages(result)["refund_invoice"].content and ran == []


def test_async_graphs_are_guarded_the_same_way(langgraph_service):
    ran.clear()
    token = session_token(langgraph_service)
    guard = ToolGuard(aclient=AsyncClient(langgraph_service.base, token), namespace="billing", resource="invoice_id")
    app = graph(guard, calls(("read_invoice", {"invoice_id": "inv-9"}), ("delete_invoice", {"invoice_id": "inv-9"}),
                             ("refund_invoice", {"invoice_id": "inv-9", "amount": 1})))

    async def run():
        first = await app.ainvoke(START_MESSAGE, CONFIG)
        langgraph_service.answer(first["__interrupt__"][0].value["ztinfra"]["approval_id"])
        return first, await app.ainvoke(Command(resume=True), CONFIG)

    first, result = asyncio.run(run())
    assert tool_messages(first)["delete_invoice"].status == "error"
    assert ran == [("read_invoice", "inv-9"), ("refund_invoice", "inv-9")]
    assert tool_messages(result)["refund_invoice"].status == "success"


def test_without_a_decision_no_tool_runs():
    ran.clear()
    guard = ToolGuard(Client(closed_port_url(), "t", retries=0, timeout=1), namespace="billing", resource="invoice_id")
    result = graph(guard, calls(("read_invoice", {"invoice_id": "inv-7"}))).invoke(START_MESSAGE, CONFIG)
    message = tool_messages(result)["read_invoice"]
    assert ran == [] and message.status == "error" and "no decision could be had" in message.content


def test_the_example_runs_as_the_readme_says(langgraph_service):
    before, waiting, out = walk_through(langgraph_service, "langgraph", "refund agreed")
    assert before == [] and waiting.startswith("waiting: billing.refund_invoice on inv-7 needs approval ")
    assert "tool refund_invoice: success: refunded 120.00 EUR on inv-7" in out
    assert "tool delete_invoice: error: `delete_invoice` was not run: denied by policy" in out
    assert out.rstrip().endswith("ran: read_invoice(inv-7), refund_invoice(inv-7, 120.0)")


def test_a_graph_run_the_way_its_guard_cannot_decide_runs_no_tool(langgraph_service):
    ran.clear()
    token = session_token(langgraph_service)
    async_only = ToolGuard(aclient=AsyncClient(langgraph_service.base, token), namespace="billing", resource="invoice_id")
    result = graph(async_only, calls(("read_invoice", {"invoice_id": "inv-7"}))).invoke(START_MESSAGE, CONFIG)
    assert ran == [] and "async client only" in tool_messages(result)["read_invoice"].content
    # A sync guard in an async run decides (in a thread) and runs what is allowed.
    sync_only = ToolGuard(Client(langgraph_service.base, token), namespace="billing", resource="invoice_id")
    app = graph(sync_only, calls(("read_invoice", {"invoice_id": "inv-7"}), ("delete_invoice", {"invoice_id": "inv-7"})))
    result = asyncio.run(app.ainvoke(START_MESSAGE, CONFIG))
    assert ran == [("read_invoice", "inv-7")] and tool_messages(result)["delete_invoice"].status == "error"
