# keyfleet bootstrap. The command line carries only this script. stdin carries two lines
# (keyfleet-helper/2): a JSON request (format, helper name, helper script in base64, its SHA-256,
# params; never a secret), then the secret as base64 of its UTF-8 bytes (an empty line for none).
# The script is verified, then run; exactly one "KEYFLEET-RESULT {json}" line is written.
# Constrained Language Mode (AppLocker/WDAC script enforcement) allows none of the .NET calls below:
# say so first. The throw leaves this script before any try, so powershell.exe writes it to stderr
# as CLIXML (ConsoleHost error format under -EncodedCommand) and exits 1; keyfleet decodes it.
if ($ExecutionContext.SessionState.LanguageMode -ne 'FullLanguage') {
    throw "KEYFLEET-CONSTRAINED-LANGUAGE: PowerShell runs in $($ExecutionContext.SessionState.LanguageMode) mode on $env:COMPUTERNAME"
}
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$helper = $null
$kind = 'protocol'
$global:KeyfleetServer = $null

function Write-KeyfleetResult([hashtable] $Result) {
    $json = ConvertTo-Json -InputObject $Result -Compress -Depth 8
    # ASCII only, so the console code page cannot alter the line
    $json = [regex]::Replace($json, '[^\x00-\x7F]', { param($m) '\u{0:x4}' -f [int][char]$m.Value })
    [Console]::Out.Write("KEYFLEET-RESULT $json`n")
    [Console]::Out.Flush()
}

try {
    # [Console]::In, not $input: powershell.exe reads stdin itself only when the command uses $input
    # (PowerShell ConsoleHost). The secret line is touched by .NET calls only: a value bound to a
    # cmdlet parameter or piped into one is logged by module logging (event 4103).
    $requestLine = [Console]::In.ReadLine()
    $secretLine = [Console]::In.ReadLine()
    if ($null -eq $requestLine -or $null -eq $secretLine) { throw 'stdin ended before a whole keyfleet-helper/2 request arrived' }
    $request = ConvertFrom-Json -InputObject $requestLine
    if ($request.format -ne 'keyfleet-helper/2') { throw 'stdin does not hold a keyfleet-helper/2 request' }
    $helper = [string]$request.helper
    $code = [Convert]::FromBase64String([string]$request.script)
    $sha256 = [Security.Cryptography.SHA256]::Create()
    $digest = [BitConverter]::ToString($sha256.ComputeHash($code)).Replace('-', '').ToLowerInvariant()
    $sha256.Dispose()
    if ($digest -ne [string]$request.sha256) { throw "the $helper helper script does not match its SHA-256" }
    $secret = $null
    if ($secretLine.Length -gt 0) {
        $secret = New-Object Security.SecureString
        $secretBytes = [Convert]::FromBase64String($secretLine)
        $secretChars = [Text.Encoding]::UTF8.GetChars($secretBytes)
        foreach ($secretChar in $secretChars) { $secret.AppendChar($secretChar) }
        [Array]::Clear($secretChars, 0, $secretChars.Length)
        [Array]::Clear($secretBytes, 0, $secretBytes.Length)
        $secret.MakeReadOnly()
    }
    $secretLine = $null
    $block = [ScriptBlock]::Create([Text.Encoding]::UTF8.GetString($code))
    $kind = 'remote'
    $result = & $block -Params $request.params -Secret $secret | Select-Object -Last 1
    if ($result -isnot [hashtable]) { throw "the $helper helper returned no result" }
    Write-KeyfleetResult @{ ok = $true; helper = $helper; result = $result }
    exit 0
}
catch {
    # a helper's failure carries its kind in Data; .NET errors arrive wrapped, the cause is innermost
    $cause = $_.Exception
    while ($cause.InnerException -and -not $cause.Data['KeyfleetKind']) { $cause = $cause.InnerException }
    if ($cause.Data['KeyfleetKind']) { $kind = $cause.Data['KeyfleetKind'] }
    $failure = @{ ok = $false; helper = $helper; error = @{ kind = $kind; message = $cause.Message } }
    if ($global:KeyfleetServer) { $failure.server = $global:KeyfleetServer }
    Write-KeyfleetResult $failure
    exit 1
}
