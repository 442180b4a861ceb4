import httpx
import openai


def test_openai_client_json_and_stream(gateway_factory, upstream_requests):
    gw = gateway_factory()
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-client")
    raw = client.chat.completions.with_raw_response.create(
        model="json", messages=[{"role": "user", "content": "hello there"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "reply: hello there"
    hitl = completion.model_extra["hitl"]
    assert raw.headers["x-hitl-reply-id"] == hitl["reply_id"]
    stream = client.chat.completions.create(
        model="json", messages=[{"role": "user", "content": "a b c"}], stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "reply: a b c"
    assert chunks[-1].model_extra["hitl"]["decision"] in {"deliver", "ask", "escalate", "hold"}
    r = httpx.post(
        gw.url + "/v1/feedback",
        json={"reply_id": hitl["reply_id"], "token": hitl["feedback_token"], "rating": "up"},
    )
    assert r.status_code == 201, r.text
