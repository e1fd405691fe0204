// Keeps what the Content-Security-Policy blocked, so that a page broken by
// the policy says so (in the console and on window.kisaraCspViolations,
// which the browser tests read) instead of failing silently.
"use strict";
window.kisaraCspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  const violation = `${event.effectiveDirective} blocked ${event.blockedURI || "inline"}`;
  window.kisaraCspViolations.push(violation);
  console.error(`Content-Security-Policy: ${violation}`);
});
