// Opens one WebSocket per subprotocol to the proxy that served this page,
// sends every byte value 0-255 (twice), collects the echo from the TCP echo
// target behind the proxy, and writes the result into the page:
//   "<subprotocol>: ok <hex of what came back>"   or
//   "<subprotocol>: error <what went wrong>".
// The page is read back with Chromium's --dump-dom or the DevTools protocol.
// There is deliberately no timer: under --virtual-time-budget a timer can
// fire early in virtual time; the test applies its own real-time deadline.
"use strict";

var PAYLOAD_LENGTH = 512;

function payload() {
  var bytes = new Uint8Array(PAYLOAD_LENGTH);
  for (var i = 0; i < PAYLOAD_LENGTH; i++) {
    bytes[i] = i % 256;
  }
  return bytes;
}

function toHex(bytes) {
  var out = [];
  for (var i = 0; i < bytes.length; i++) {
    out.push((bytes[i] < 16 ? "0" : "") + bytes[i].toString(16));
  }
  return out.join("");
}

function bytesToBinaryString(bytes) {
  var text = "";
  for (var i = 0; i < bytes.length; i++) {
    text += String.fromCharCode(bytes[i]);
  }
  return text;
}

function binaryStringToBytes(text) {
  var bytes = new Uint8Array(text.length);
  for (var i = 0; i < text.length; i++) {
    bytes[i] = text.charCodeAt(i);
  }
  return bytes;
}

var finished = 0;

function report(subprotocol, text) {
  var element = document.getElementById(subprotocol);
  if (element.getAttribute("data-final")) {
    return;
  }
  element.setAttribute("data-final", "1");
  element.textContent = subprotocol + ": " + text;
  finished += 1;
  if (finished === 2) {
    document.getElementById("done").textContent = "done";
  }
}

function run(subprotocol) {
  var scheme = location.protocol === "https:" ? "wss://" : "ws://";
  var url = scheme + location.host + "/websockify";
  var sent = payload();
  var received = [];
  var count = 0;
  var ws;
  try {
    ws = new WebSocket(url, [subprotocol]);
  } catch (error) {
    report(subprotocol, "error cannot open " + url + ": " + error);
    return;
  }
  ws.binaryType = "arraybuffer";
  ws.onopen = function () {
    if (ws.protocol !== subprotocol) {
      report(subprotocol, "error server chose subprotocol '" + ws.protocol + "'");
      ws.close();
      return;
    }
    if (subprotocol === "binary") {
      ws.send(sent.buffer);
    } else {
      ws.send(btoa(bytesToBinaryString(sent)));
    }
  };

  ws.onmessage = function (event) {
    var chunk;
    if (subprotocol === "binary") {
      if (!(event.data instanceof ArrayBuffer)) {
        report(subprotocol, "error expected a binary message");
        ws.close();
        return;
      }
      chunk = new Uint8Array(event.data);
    } else {
      if (typeof event.data !== "string") {
        report(subprotocol, "error expected a text message");
        ws.close();
        return;
      }
      chunk = binaryStringToBytes(atob(event.data));
    }
    received.push(chunk);
    count += chunk.length;
    if (count >= sent.length) {
      var all = new Uint8Array(count);
      var offset = 0;
      for (var i = 0; i < received.length; i++) {
        all.set(received[i], offset);
        offset += received[i].length;
      }
      report(subprotocol, "ok " + toHex(all));
      ws.close(1000, "done");
    }
  };

  ws.onerror = function () {
    report(subprotocol, "error the WebSocket failed after " + count + " bytes");
  };

  ws.onclose = function (event) {
    if (count < sent.length) {
      report(subprotocol, "error closed with code " + event.code + " after " + count + " bytes");
    }
  };
}

run("binary");
run("base64");
